//! The mandate and charge records, as stored. Not serialisable on purpose: what the merchant
//! sees of them is `api::MandateResponse` and `api::ChargeResponse`.

use std::collections::BTreeMap;

use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{ChargeStatus, MandateStatus};

/// A customer's authorisation for future charges (a `first_in_series` session at Moment).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Mandate {
    pub id: Uuid,
    pub status: MandateStatus,
    pub amount: i64,
    pub currency: String,
    pub reference: Option<String>,
    pub metadata: Json<BTreeMap<String, String>>,
    /// The Moment hosted checkout, once the session exists.
    pub checkout_url: Option<String>,
    pub session_id: Option<String>,
    pub customer_id: Option<String>,
    pub payment_method_id: Option<String>,
    /// The first payment, made at checkout.
    pub payment_id: Option<String>,
    pub failure: Option<Json<serde_json::Value>>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub customer_name: String,
    pub customer_email: String,
    pub return_url: Option<String>,
    pub request_hash: String,
    pub locked_until: Option<OffsetDateTime>,
    /// When the customer's return last fetched the session from Moment.
    pub refreshed_at: Option<OffsetDateTime>,
    /// What the customer consented to; null only for mandates made before terms existed.
    pub terms: Option<Json<super::terms::Terms>>,
}

impl Mandate {
    /// The mandate's terms: its own, or for a mandate made before terms existed, its amount
    /// as the ceiling of every charge.
    pub fn terms(&self) -> super::terms::Terms {
        self.terms.as_ref().map_or_else(
            || super::terms::Terms::ceiling(self.amount),
            |t| t.0.clone(),
        )
    }
}

/// One merchant-initiated payment under a mandate (a `next_in_series` session at Moment).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Charge {
    pub id: Uuid,
    pub mandate_id: Uuid,
    pub status: ChargeStatus,
    pub amount: i64,
    pub currency: String,
    pub reference: Option<String>,
    pub metadata: Json<BTreeMap<String, String>>,
    pub session_id: Option<String>,
    pub payment_id: Option<String>,
    /// Why the charge failed: Moment's `last_payment_error`, or its problem details.
    pub failure: Option<Json<serde_json::Value>>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// The mandate's Moment ids, copied when the charge is recorded so that every resend
    /// carries the very same body under the same Moment idempotency key.
    pub customer_id: String,
    pub payment_method_id: String,
    pub request_hash: String,
    pub response_status: Option<i16>,
    pub response_body: Option<Json<serde_json::Value>>,
    pub locked_until: Option<OffsetDateTime>,
    pub attempts: i32,
    /// Why the charge needs review: `{code, message}`.
    pub review_reason: Option<Json<serde_json::Value>>,
    /// Who holds `locked_until` (see `store::charges`).
    pub lease_token: Option<Uuid>,
    /// Sends to Moment begun, counted before each call.
    pub sends: i32,
    /// For a scheduled charge: its subscription and period.
    pub subscription_id: Option<Uuid>,
    pub period: Option<i32>,
}

impl Charge {
    /// The HTTP status that describes this charge to the merchant: `202` while its outcome
    /// at Moment is unknown (`pending`, `needs_review`), `201` once Moment has answered.
    pub fn http_status(&self) -> u16 {
        if matches!(
            self.status,
            ChargeStatus::Pending | ChargeStatus::NeedsReview
        ) {
            202
        } else {
            201
        }
    }
}
