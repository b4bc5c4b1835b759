//! Moment's JSON, as `moment-api.md` and the recurring-payments guide describe it.
//!
//! Responses are read leniently: unknown fields are ignored, unknown enum values become
//! `Unknown`, and most fields are optional, because Moment's changes are additive.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /collect/payment_sessions` body.
#[derive(Debug, Clone, Serialize)]
pub struct CreateSessionRequest {
    #[serde(rename = "type")]
    pub kind: SessionType,
    pub amount: i64,
    pub currency: String,
    pub options: SessionOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_reference: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// `options`, whose shape depends on the session type.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum SessionOptions {
    /// `first_in_series`: the customer is present and authorises future charges.
    FirstInSeries {
        customer: NewCustomer,
        checkout_options: CheckoutOptions,
        /// The customer's consent terms (`domain::terms::Terms`), as Moment takes them.
        #[serde(skip_serializing_if = "Option::is_none")]
        mandate_options: Option<serde_json::Value>,
    },
    /// `next_in_series`: ids from the completed `first_in_series`, as plain strings.
    NextInSeries {
        customer: String,
        payment_method: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct NewCustomer {
    pub name: String,
    pub email: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckoutOptions {
    pub return_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionType {
    OneTime,
    FirstInSeries,
    NextInSeries,
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Active,
    Completed,
    Expired,
    Cancelled,
    #[serde(other)]
    Unknown,
}

/// `payment_outcome`, or the deprecated `payment_status` mapped onto it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentOutcome {
    NotStarted,
    Pending,
    Paid,
    Unpaid,
    Reserved,
    PaymentMethodVerified,
    #[serde(other)]
    Unknown,
}

/// The payment session object (`data` of `payment_session.*` events).
#[derive(Debug, Clone, Deserialize)]
pub struct Session {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: Option<SessionType>,
    pub status: Option<SessionStatus>,
    pub payment_outcome: Option<PaymentOutcome>,
    pub payment_status: Option<PaymentOutcome>,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub customer_id: Option<String>,
    pub payment_method_id: Option<String>,
    pub payment_id: Option<String>,
    pub session_url: Option<String>,
    pub external_reference: Option<String>,
    pub last_payment_error: Option<serde_json::Value>,
    /// `live` or `test`: the mode of the key the session was created with.
    pub mode: Option<String>,
}

impl Session {
    /// `payment_outcome` when present, else the deprecated `payment_status`.
    pub fn outcome(&self) -> Option<PaymentOutcome> {
        self.payment_outcome.or(self.payment_status)
    }
}

/// A webhook body: `{"id", "type", "data"}`. `data` stays raw until the type says what it is.
#[derive(Debug, Deserialize)]
pub struct Event {
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

/// RFC 9457 problem details as Moment sends them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Problem {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn next_in_series_options_are_plain_ids_as_the_guide_shows() {
        let req = CreateSessionRequest {
            kind: SessionType::NextInSeries,
            amount: 5000,
            currency: "ZAR".into(),
            options: SessionOptions::NextInSeries {
                customer: "cus_1".into(),
                payment_method: "pmt_1".into(),
            },
            external_reference: Some("ref".into()),
            metadata: BTreeMap::new(),
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"type": "next_in_series", "amount": 5000, "currency": "ZAR",
                   "options": {"customer": "cus_1", "payment_method": "pmt_1"},
                   "external_reference": "ref"})
        );
    }

    #[test]
    fn unknown_values_and_fields_are_tolerated() {
        let s: Session = serde_json::from_value(json!({
            "id": "ps_1", "type": "something_new", "status": "paused",
            "payment_status": "paid", "brand_new_field": 1
        }))
        .unwrap();
        assert_eq!(s.kind, Some(SessionType::Unknown));
        assert_eq!(s.status, Some(SessionStatus::Unknown));
        assert_eq!(s.outcome(), Some(PaymentOutcome::Paid));
    }

    #[test]
    fn payment_outcome_wins_over_the_deprecated_status() {
        let s: Session = serde_json::from_value(json!({
            "id": "ps_1", "payment_outcome": "payment_method_verified", "payment_status": "unpaid"
        }))
        .unwrap();
        assert_eq!(s.outcome(), Some(PaymentOutcome::PaymentMethodVerified));
    }
}
