//! What the merchant's API answers about mandates and charges, and what the OpenAPI document
//! shows of them. Built field by field from the stored rows (`domain::Mandate`, `Charge`),
//! which are not serialisable themselves: a new column reaches merchants only when it is
//! added here, on purpose.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::terms::{Terms, Warning};
use crate::domain::{Charge, ChargeStatus, Mandate, MandateStatus};

/// A customer's authorisation for future charges (a `first_in_series` session at Moment).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = Mandate, example = json!({
    "id": "01a20e0a-fb07-7569-a87f-9afae148c0ff", "status": "active", "amount": 5000,
    "currency": "ZAR", "reference": "sub_42", "metadata": {"plan": "gold"},
    "checkout_url": "https://checkout.momentpay.net/cktaoPzVYDN0rI7FH",
    "session_id": "ps_eLtQXMBUErQF5i", "customer_id": "cus_J17pnG25nuvKu",
    "payment_method_id": "pmt_izWG6Vcvy4VYiU", "payment_id": "pay_rOaZNqKZMFxsRb2NBL1cj",
    "failure": null,
    "terms": {"type": "scheduled", "amount": {"min": 5000, "max": 15000},
              "recurrence": {"type": "monthly", "interval_count": 1}, "max_occurrences": 12,
              "period_limits": {"period": "month", "max_count": 1}},
    "ledger": {"occurrences_used": 3, "occurrences_left": 9,
               "window": {"start": "2026-11-01", "end": "2026-12-01", "count": 1, "amount": 5000,
                          "max_count": 1, "max_amount": null}},
    "created_at": "2026-11-24T10:00:00Z", "updated_at": "2026-11-24T10:02:13Z"
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
    /// What the customer consented to, as sent to Moment (`mandate_options`).
    pub terms: Terms,
    /// What the terms do to Moment's checkout (for example `capitec_pay_hidden`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
    /// How much of the terms is used: only in `GET /mandates/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<Ledger>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

/// The consent ledger: how much of a mandate's terms is used, counting the first payment and
/// every charge that succeeded or may still succeed.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Ledger {
    pub occurrences_used: i64,
    /// Null without `max_occurrences`.
    pub occurrences_left: Option<i64>,
    /// The current `period_limits` window, in Africa/Johannesburg days; null without limits.
    pub window: Option<LedgerWindow>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LedgerWindow {
    /// The first day of the window and the day after its last (Africa/Johannesburg).
    #[schema(format = Date)]
    pub start: String,
    #[schema(format = Date)]
    pub end: String,
    pub count: i64,
    pub amount: i64,
    pub max_count: Option<u32>,
    pub max_amount: Option<i64>,
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
            warnings: m.terms().warnings(m.amount),
            terms: m.terms(),
            ledger: None,
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
    /// For a charge made by a subscription: the subscription, and the period it bills (0 is
    /// the first).
    #[serde(default)]
    pub subscription_id: Option<Uuid>,
    #[serde(default)]
    pub period: Option<i32>,
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
            subscription_id: c.subscription_id,
            period: c.period,
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

/// An event: a change of a mandate or a charge (or of an endpoint), with the resource as the
/// API showed it at that change.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = Event, example = json!({
    "id": "6c1f0d7e-2b8a-4f57-9a51-5f0b2b6de0a1", "type": "charge.succeeded",
    "created_at": "2026-12-01T00:00:03Z",
    "resource": {"type": "charge", "id": "01a20e0b-0060-7317-a692-c12c49da851e"},
    "sequence": 3,
    "data": {"id": "01a20e0b-0060-7317-a692-c12c49da851e", "status": "succeeded"}
}))]
pub struct EventResponse {
    pub id: Uuid,
    /// `mandate.created`, `mandate.active`, …, `charge.succeeded`, … (see the README).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    pub resource: ResourceRef,
    /// Grows with each change of the resource: drop an event older than one already seen.
    pub sequence: i64,
    /// The resource as `GET /mandates/{id}` or `GET /charges/{id}` showed it then.
    #[schema(value_type = Object)]
    pub data: Value,
}

/// What an event is about.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResourceRef {
    /// `mandate`, `charge` or `webhook_endpoint`.
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Uuid,
}

impl From<&crate::store::events::Event> for EventResponse {
    fn from(e: &crate::store::events::Event) -> Self {
        Self {
            id: e.id,
            kind: e.kind.clone(),
            created_at: e.created_at,
            resource: ResourceRef {
                kind: e.resource_type.clone(),
                id: e.resource_id,
            },
            sequence: e.sequence,
            data: e.data.0.clone(),
        }
    }
}

/// A merchant's endpoint for webhooks out. The signing secret is shown only when it is made
/// (creation, rotation).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = WebhookEndpoint)]
pub struct EndpointResponse {
    pub id: Uuid,
    pub url: String,
    /// The event types sent; null for all.
    pub event_types: Option<Vec<String>>,
    pub enabled: bool,
    /// Why it is disabled: `gone` (it answered 410), `failing` (5 days without a success) or
    /// `merchant`.
    pub disabled_reason: Option<String>,
    /// Since when every delivery has failed, while they do.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub failing_since: Option<OffsetDateTime>,
    /// The `whsec_…` signing secret: only in the answer that made it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub secret: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

impl From<&crate::store::webhook_endpoints::Endpoint> for EndpointResponse {
    fn from(e: &crate::store::webhook_endpoints::Endpoint) -> Self {
        Self {
            id: e.id,
            url: e.url.clone(),
            event_types: e.event_types.clone(),
            enabled: e.enabled,
            disabled_reason: e.disabled_reason.clone(),
            failing_since: e.failing_since,
            secret: None,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// One attempt to deliver an event to an endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptResponse {
    pub delivery_id: Uuid,
    pub endpoint_id: Uuid,
    /// The delivery's state: `pending`, `delivered` or `failed` (given up).
    pub delivery_status: String,
    /// When the attempt was made; null for a delivery not attempted yet.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub attempted_at: Option<OffsetDateTime>,
    /// The endpoint's HTTP status, or null when no answer came.
    pub status_code: Option<i32>,
    /// Why no answer came (`timeout`, `connection refused`, …).
    pub error: Option<String>,
    pub duration_ms: Option<i32>,
}

impl From<&crate::store::deliveries::AttemptRow> for AttemptResponse {
    fn from(a: &crate::store::deliveries::AttemptRow) -> Self {
        Self {
            delivery_id: a.delivery_id,
            endpoint_id: a.endpoint_id,
            delivery_status: a.delivery_status.clone(),
            attempted_at: a.attempted_at,
            status_code: a.status_code,
            error: a.error.clone(),
            duration_ms: a.duration_ms,
        }
    }
}

/// A subscription: a mandate charged on a schedule by the service, exactly once per period.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Subscription)]
pub struct SubscriptionResponse {
    pub id: Uuid,
    pub mandate_id: Uuid,
    pub status: crate::domain::SubscriptionStatus,
    pub amount: i64,
    pub currency: String,
    pub schedule: crate::domain::subscription::ScheduleSpec,
    pub reference: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// The next period to bill (0 is the first) and when; null when no period is left.
    pub next_period: i32,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_charge_at: Option<OffsetDateTime>,
    /// The charge in flight, if any.
    pub open_charge_id: Option<Uuid>,
    pub cancel_at_period_end: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub resume_at: Option<OffsetDateTime>,
    /// While `past_due`: the period retried, failures so far, the next retry and the last
    /// failure.
    #[schema(value_type = Option<Object>)]
    pub dunning: Option<Value>,
    /// Why the last charge failed or could not be made (kept after dunning ends).
    #[schema(value_type = Option<Object>)]
    pub last_failure: Option<Value>,
    /// The next charges (12 at most) with the term that would stop each: only in
    /// `GET /subscriptions/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview: Option<Vec<crate::domain::subscription::Upcoming>>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

impl From<&crate::domain::Subscription> for SubscriptionResponse {
    fn from(s: &crate::domain::Subscription) -> Self {
        let dunning = s.dunning_period.map(|period| {
            serde_json::json!({
                "period": period,
                "failures": s.dunning_failures,
                "next_retry_at": s.retry_at.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
                "last_failure": s.last_failure.as_ref().map(|f| f.0.clone()),
            })
        });
        Self {
            id: s.id,
            mandate_id: s.mandate_id,
            status: s.status,
            amount: s.amount,
            currency: s.currency.clone(),
            schedule: s.schedule.0.clone(),
            reference: s.reference.clone(),
            metadata: s.metadata.0.clone(),
            next_period: s.next_period,
            next_charge_at: s.next_charge_at,
            open_charge_id: s.open_charge_id,
            cancel_at_period_end: s.cancel_at_period_end,
            resume_at: s.resume_at,
            dunning,
            last_failure: s.last_failure.as_ref().map(|f| f.0.clone()),
            preview: None,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}
