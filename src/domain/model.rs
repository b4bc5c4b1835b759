//! The mandate and charge records, as stored and as shown to the merchant.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{ChargeStatus, MandateStatus};

/// A customer's authorisation for future charges (a `first_in_series` session at Moment).
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(example = json!({
    "id": "01a20e0a-fb07-7569-a87f-9afae148c0ff", "status": "active", "amount": 5000,
    "currency": "ZAR", "reference": "sub_42", "metadata": {"plan": "gold"},
    "checkout_url": "https://checkout.momentpay.net/cktaoPzVYDN0rI7FH",
    "session_id": "ps_eLtQXMBUErQF5i", "customer_id": "cus_J17pnG25nuvKu",
    "payment_method_id": "pmt_izWG6Vcvy4VYiU", "payment_id": "pay_rOaZNqKZMFxsRb2NBL1cj",
    "failure": null, "created_at": "2026-11-24T10:00:00Z", "updated_at": "2026-11-24T10:02:13Z"
}))]
pub struct Mandate {
    pub id: Uuid,
    pub status: MandateStatus,
    pub amount: i64,
    pub currency: String,
    pub reference: Option<String>,
    #[schema(value_type = BTreeMap<String, String>)]
    pub metadata: Json<BTreeMap<String, String>>,
    /// The Moment hosted checkout, once the session exists.
    pub checkout_url: Option<String>,
    pub session_id: Option<String>,
    pub customer_id: Option<String>,
    pub payment_method_id: Option<String>,
    /// The first payment, made at checkout.
    pub payment_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub failure: Option<Json<serde_json::Value>>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
    #[serde(skip)]
    pub customer_name: String,
    #[serde(skip)]
    pub customer_email: String,
    #[serde(skip)]
    pub return_url: Option<String>,
    #[serde(skip)]
    pub request_hash: String,
    #[serde(skip)]
    #[schema(ignore)]
    pub locked_until: Option<OffsetDateTime>,
}

/// One merchant-initiated payment under a mandate (a `next_in_series` session at Moment).
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(example = json!({
    "id": "01a20e0b-0060-7317-a692-c12c49da851e",
    "mandate_id": "01a20e0a-fb07-7569-a87f-9afae148c0ff", "status": "succeeded",
    "amount": 5000, "currency": "ZAR", "reference": "inv_2026_12", "metadata": {},
    "session_id": "ps_5xQW0SbeD6zWZS", "payment_id": "pay_57jhCV7dzCRpy9zH0hO6Y",
    "failure": null, "created_at": "2026-12-01T00:00:01Z", "updated_at": "2026-12-01T00:00:03Z"
}))]
pub struct Charge {
    pub id: Uuid,
    pub mandate_id: Uuid,
    pub status: ChargeStatus,
    pub amount: i64,
    pub currency: String,
    pub reference: Option<String>,
    #[schema(value_type = BTreeMap<String, String>)]
    pub metadata: Json<BTreeMap<String, String>>,
    pub session_id: Option<String>,
    pub payment_id: Option<String>,
    /// Why the charge failed: Moment's `last_payment_error`, or its problem details.
    #[schema(value_type = Option<Object>)]
    pub failure: Option<Json<serde_json::Value>>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
    /// The mandate's Moment ids, copied when the charge is recorded so that every resend
    /// carries the very same body under the same Moment idempotency key.
    #[serde(skip)]
    pub customer_id: String,
    #[serde(skip)]
    pub payment_method_id: String,
    #[serde(skip)]
    pub request_hash: String,
    #[serde(skip)]
    pub response_status: Option<i16>,
    #[serde(skip)]
    #[schema(ignore)]
    pub response_body: Option<Json<serde_json::Value>>,
    #[serde(skip)]
    #[schema(ignore)]
    pub locked_until: Option<OffsetDateTime>,
    #[serde(skip)]
    pub attempts: i32,
}

impl Charge {
    /// The HTTP status that describes this charge to the merchant: `202` while its outcome
    /// at Moment is unknown, `201` once Moment has answered.
    pub fn http_status(&self) -> u16 {
        if self.status == ChargeStatus::Pending {
            202
        } else {
            201
        }
    }
}
