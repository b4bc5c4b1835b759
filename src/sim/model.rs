//! The simulator's objects, serialised in Moment's shapes (`moment-api.md` §6–§10).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::format_description;

use super::cards::Behaviour;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    OneTime,
    FirstInSeries,
    NextInSeries,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Completed,
    Expired,
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    NotStarted,
    Pending,
    Paid,
    Unpaid,
    PaymentMethodVerified,
}

impl Outcome {
    /// The deprecated `payment_status` Moment still fills in.
    fn payment_status(self) -> &'static str {
        match self {
            Outcome::Paid | Outcome::PaymentMethodVerified => "paid",
            Outcome::Pending => "pending",
            Outcome::NotStarted | Outcome::Unpaid => "unpaid",
        }
    }
}

/// A payment session, as `GET /collect/payment_sessions/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub status: Status,
    pub payment_outcome: Outcome,
    pub payment_status: &'static str,
    pub amount: i64,
    pub currency: String,
    pub customer_id: Option<String>,
    pub payment_method_id: Option<String>,
    pub payment_id: Option<String>,
    pub checkout_session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_url: Option<String>,
    pub return_url: Option<String>,
    pub last_payment_error: Option<Value>,
    pub mode: &'static str,
    pub external_reference: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub created_at: String,
    pub updated_at: String,
}

impl Session {
    /// Sets the outcome (and the deprecated status with it) and touches `updated_at`.
    pub fn set(&mut self, status: Status, outcome: Outcome) {
        self.status = status;
        self.payment_outcome = outcome;
        self.payment_status = outcome.payment_status();
        self.updated_at = now();
    }
}

/// What a `first_in_series` mandate lets later charges take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ceiling {
    /// Any amount (a zero-amount verification without `mandate_options.amount`).
    Any,
    /// Exactly this amount on every charge.
    Exact { amount: i64 },
    /// Between the bounds, inclusive.
    Range { min: Option<i64>, max: Option<i64> },
}

impl Ceiling {
    pub fn allows(self, amount: i64) -> bool {
        match self {
            Ceiling::Any => true,
            Ceiling::Exact { amount: a } => a == amount,
            Ceiling::Range { min, max } => {
                min.is_none_or(|m| amount >= m) && max.is_none_or(|m| amount <= m)
            }
        }
    }
}

/// A payment method saved by a completed `first_in_series` checkout.
#[derive(Debug, Clone, Serialize)]
pub struct SavedMethod {
    pub id: String,
    pub customer_id: String,
    pub currency: String,
    pub ceiling: Ceiling,
    /// The mandate's `mandate_options`, held against every later charge.
    #[serde(skip)]
    pub terms: Option<std::sync::Arc<crate::domain::terms::Terms>>,
    /// Payments under the mandate: the first (no session: it counts when above 0) and each
    /// later charge's session, which counts while it is processing or once it succeeded.
    #[serde(skip)]
    pub payments: Vec<(OffsetDateTime, i64, Option<String>)>,
    /// A `LaterInsufficientFunds` card's account has been funded.
    pub funded: bool,
    pub behaviour: Behaviour,
    pub last4: String,
}

/// A payment (`payment.*` events, `GET /collect/payments/{id}`).
pub fn payment(session: &Session, status: &str, last4: &str, error: Option<&Value>) -> Value {
    let paid = status == "succeeded";
    let verification = session.amount == 0;
    json!({
        "id": session.payment_id,
        "reconciliation_reference": session.payment_id.as_deref().map(|p| p.replace("pay_", "REC")),
        "status": status,
        "amount": session.amount,
        "currency": session.currency,
        "country": "ZA",
        "capture_method": "automatic",
        "intent": if verification { "payment_method_verification" } else { "payment" },
        "authorised_amount": if paid { session.amount } else { 0 },
        "paid_amount": if paid { session.amount } else { 0 },
        "voided_amount": 0,
        "payment_method_details": {
            "type": "card",
            "card": {"type": "CREDIT", "scheme": "VISA", "bin": "424242", "last4": last4}
        },
        "external_reference": session.external_reference,
        "last_payment_error": error,
        "metadata": session.metadata,
        "mode": session.mode,
        "created_at": session.created_at,
        "updated_at": now(),
    })
}

/// Now, as Moment writes timestamps: `2025-03-18T14:13:51.379Z`.
pub fn now() -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::now_utc()
        .format(&fmt)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// `prefix` and `len` random alphanumerics, like Moment's ids.
pub fn new_id(prefix: &str, len: usize) -> String {
    let mut id = String::with_capacity(prefix.len() + len);
    id.push_str(prefix);
    for _ in 0..len {
        id.push(ALPHABET[fastrand::usize(..ALPHABET.len())] as char);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_ids_have_moments_shapes() {
        let t = now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z'));
        assert!(OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).is_ok());
        let id = new_id("ps_", 14);
        assert_eq!(id.len(), 17);
        assert!(id[3..].chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn ceilings_bound_amounts() {
        assert!(Ceiling::Any.allows(1_000_000));
        assert!(Ceiling::Exact { amount: 5000 }.allows(5000));
        assert!(!Ceiling::Exact { amount: 5000 }.allows(4999));
        let r = Ceiling::Range {
            min: Some(100),
            max: Some(200),
        };
        assert!(r.allows(100) && r.allows(200) && !r.allows(99) && !r.allows(201));
        assert!(
            Ceiling::Range {
                min: None,
                max: Some(10)
            }
            .allows(0)
        );
    }
}
