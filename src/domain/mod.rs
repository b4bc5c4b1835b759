//! Mandates, charges and the rules that move them: what a Moment session snapshot means for
//! the mandate or charge it belongs to. No I/O here.

mod model;
pub mod schedule;
mod status;
pub mod subscription;
pub mod terms;

pub use model::{Charge, Mandate};
pub use status::{ChargeStatus, MandateStatus, SubscriptionStatus};
pub use subscription::Subscription;

use serde_json::{Value, json};

use crate::moment::wire::{PaymentOutcome, Session, SessionStatus, SessionType};

/// What a session snapshot (from a webhook or a fetch) asks of our records.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A `first_in_series` session reached a state that settles its mandate.
    Mandate(Transition<MandateStatus>),
    /// A `next_in_series` session moved its charge along.
    Charge(Transition<ChargeStatus>),
}

/// Move the record found by `external_reference` (our id, when Moment echoed it; otherwise by
/// `session_id`) to `to`, but only from one of `from`: a late or replayed older snapshot never
/// takes a record back.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition<S: 'static> {
    pub session_id: String,
    /// Our own id, when Moment echoed it as `external_reference`.
    pub external_reference: Option<uuid::Uuid>,
    pub to: S,
    pub from: &'static [S],
    pub customer_id: Option<String>,
    pub payment_method_id: Option<String>,
    pub payment_id: Option<String>,
    /// `{code, decline_code, message}` from Moment's `last_payment_error`, on failure.
    pub failure: Option<Value>,
    /// The session's amount and currency, when it carries them: a record of ours with
    /// another amount or currency is not moved by it.
    pub amount: Option<i64>,
    pub currency: Option<String>,
}

impl Effect {
    /// The effect of `session`, or `None` when it settles nothing yet (still active, unknown
    /// type or status).
    pub fn of(session: &Session) -> Option<Effect> {
        let outcome = session.outcome();
        let status = session.status?;
        match session.kind? {
            SessionType::FirstInSeries => {
                let to = match status {
                    SessionStatus::Completed => match outcome? {
                        PaymentOutcome::Paid
                        | PaymentOutcome::PaymentMethodVerified
                        | PaymentOutcome::Reserved => MandateStatus::Active,
                        PaymentOutcome::Unpaid => MandateStatus::Failed,
                        _ => return None,
                    },
                    SessionStatus::Expired => MandateStatus::Expired,
                    SessionStatus::Cancelled => MandateStatus::Cancelled,
                    SessionStatus::Active | SessionStatus::Unknown => return None,
                };
                // A mandate without both ids cannot be charged: do not call it active.
                if to == MandateStatus::Active
                    && (session.customer_id.is_none() || session.payment_method_id.is_none())
                {
                    return None;
                }
                Some(Effect::Mandate(transition(
                    session,
                    to,
                    &[MandateStatus::Pending],
                )))
            }
            SessionType::NextInSeries => {
                use ChargeStatus::{Failed, NeedsReview, Pending, Processing, Succeeded};
                // Not settled by Moment yet, as far as we know.
                const OPEN: &[ChargeStatus] = &[Pending, Processing, NeedsReview];
                // Moment is the source of truth for money moved: a payment it reports made
                // succeeds the charge even where we had marked it failed.
                const PAID_FROM: &[ChargeStatus] = &[Pending, Processing, NeedsReview, Failed];
                let (to, from) = match status {
                    SessionStatus::Completed => match outcome? {
                        PaymentOutcome::Paid | PaymentOutcome::Reserved => (Succeeded, PAID_FROM),
                        PaymentOutcome::Unpaid => (Failed, OPEN),
                        _ => return None,
                    },
                    SessionStatus::Expired | SessionStatus::Cancelled => (Failed, OPEN),
                    SessionStatus::Active => (Processing, &[Pending, NeedsReview][..]),
                    SessionStatus::Unknown => return None,
                };
                let mut t = transition(session, to, from);
                if to == ChargeStatus::Failed && t.failure.is_none() {
                    let code = match status {
                        SessionStatus::Expired => "session_expired",
                        SessionStatus::Cancelled => "session_cancelled",
                        _ => "payment_failed",
                    };
                    t.failure = Some(
                        json!({ "code": code, "message": "Moment reported the payment as unpaid" }),
                    );
                }
                Some(Effect::Charge(t))
            }
            SessionType::OneTime | SessionType::Unknown => None,
        }
    }
}

fn transition<S: Copy + 'static>(session: &Session, to: S, from: &'static [S]) -> Transition<S> {
    Transition {
        session_id: session.id.clone(),
        external_reference: session
            .external_reference
            .as_deref()
            .and_then(|r| r.parse().ok()),
        to,
        from,
        customer_id: session.customer_id.clone(),
        payment_method_id: session.payment_method_id.clone(),
        payment_id: session.payment_id.clone(),
        amount: session.amount,
        currency: session.currency.clone(),
        failure: session
            .last_payment_error
            .as_ref()
            .filter(|v| !v.is_null())
            .map(failure_from_payment_error),
    }
}

/// Our `failure` object from Moment's `last_payment_error`.
fn failure_from_payment_error(err: &Value) -> Value {
    json!({
        "code": err.get("error_code").cloned().unwrap_or(Value::Null),
        "decline_code": err.get("decline_code").cloned().unwrap_or(Value::Null),
        "message": err.get("message").cloned().unwrap_or(Value::Null),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(v: Value) -> Session {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_paid_first_in_series_activates_the_mandate_with_both_ids() {
        let s = session(
            json!({"id": "ps_1", "type": "first_in_series", "status": "completed",
            "payment_status": "paid", "customer_id": "cus_1", "payment_method_id": "pmt_1", "payment_id": "pay_1"}),
        );
        let Some(Effect::Mandate(t)) = Effect::of(&s) else {
            panic!()
        };
        assert_eq!(t.to, MandateStatus::Active);
        assert_eq!(t.from, &[MandateStatus::Pending]);
        assert_eq!(t.payment_method_id.as_deref(), Some("pmt_1"));
    }

    #[test]
    fn an_unpaid_next_in_series_fails_the_charge_with_moments_reason() {
        let s = session(
            json!({"id": "ps_2", "type": "next_in_series", "status": "completed",
            "payment_outcome": "unpaid", "last_payment_error": {"error_code": "card_declined",
            "decline_code": "insufficient_funds", "message": "no money"}}),
        );
        let Some(Effect::Charge(t)) = Effect::of(&s) else {
            panic!()
        };
        assert_eq!(t.to, ChargeStatus::Failed);
        assert_eq!(t.failure.unwrap()["decline_code"], "insufficient_funds");
    }

    #[test]
    fn an_active_session_moves_only_a_pending_or_needs_review_charge_to_processing() {
        let s = session(
            json!({"id": "ps_3", "type": "next_in_series", "status": "active", "payment_status": "unpaid"}),
        );
        let Some(Effect::Charge(t)) = Effect::of(&s) else {
            panic!()
        };
        assert_eq!(
            (t.to, t.from),
            (
                ChargeStatus::Processing,
                &[ChargeStatus::Pending, ChargeStatus::NeedsReview][..]
            )
        );
    }

    #[test]
    fn sessions_that_settle_nothing_have_no_effect() {
        for v in [
            json!({"id": "ps", "type": "first_in_series", "status": "active", "payment_status": "unpaid"}),
            json!({"id": "ps", "type": "first_in_series", "status": "completed", "payment_outcome": "pending"}),
            json!({"id": "ps", "type": "first_in_series", "status": "completed", "payment_status": "paid"}),
            json!({"id": "ps", "type": "one_time", "status": "completed", "payment_status": "paid"}),
            json!({"id": "ps"}),
        ] {
            assert_eq!(Effect::of(&session(v.clone())), None, "{v}");
        }
    }

    #[test]
    fn expired_and_cancelled_checkouts_end_the_mandate() {
        for (status, want) in [
            ("expired", MandateStatus::Expired),
            ("cancelled", MandateStatus::Cancelled),
        ] {
            let s = session(
                json!({"id": "ps", "type": "first_in_series", "status": status, "payment_status": "unpaid"}),
            );
            let Some(Effect::Mandate(t)) = Effect::of(&s) else {
                panic!()
            };
            assert_eq!(t.to, want);
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn maybe(values: &'static [&'static str]) -> impl Strategy<Value = Value> {
        prop_oneof![
            2 => Just(Value::Null),
            8 => proptest::sample::select(values).prop_map(|v| json!(v)),
            1 => any::<i64>().prop_map(|n| json!(n)),
        ]
    }

    fn session_json() -> impl Strategy<Value = Value> {
        (
            maybe(&["first_in_series", "next_in_series", "one_time", "subscription"]),
            maybe(&["active", "completed", "expired", "cancelled", "paused"]),
            maybe(&["not_started", "pending", "paid", "unpaid", "reserved", "payment_method_verified", "refunded"]),
            maybe(&["paid", "unpaid", "pending"]),
            maybe(&["cus_1"]),
            maybe(&["pmt_1"]),
            maybe(&["01a20e0a-fb07-7569-a87f-9afae148c0ff", "not-a-uuid"]),
            maybe(&["x"]),
        )
            .prop_map(|(kind, status, outcome, legacy, cus, pm, reference, error)| {
                json!({"id": "ps_1", "type": kind, "status": status, "payment_outcome": outcome,
                       "payment_status": legacy, "customer_id": cus, "payment_method_id": pm,
                       "external_reference": reference,
                       "last_payment_error": if error.is_null() { Value::Null } else { json!({"error_code": error}) }})
            })
    }

    proptest! {
        /// Whatever Moment sends, reading it never panics, and an effect keeps the rules: a
        /// mandate only becomes active with both ids, charges only come from next_in_series,
        /// and nothing ever moves a record back to pending.
        #[test]
        fn any_session_snapshot_gives_a_safe_effect(v in session_json()) {
            let Ok(session) = serde_json::from_value::<Session>(v.clone()) else {
                return Ok(());
            };
            match Effect::of(&session) {
                None => {}
                Some(Effect::Mandate(t)) => {
                    prop_assert_eq!(v["type"].as_str(), Some("first_in_series"));
                    prop_assert_eq!(t.from, &[MandateStatus::Pending][..]);
                    if t.to == MandateStatus::Active {
                        prop_assert!(t.customer_id.is_some() && t.payment_method_id.is_some());
                    }
                }
                Some(Effect::Charge(t)) => {
                    prop_assert_eq!(v["type"].as_str(), Some("next_in_series"));
                    prop_assert!(t.to != ChargeStatus::Pending);
                    prop_assert!(!t.from.contains(&t.to));
                    if t.to == ChargeStatus::Failed {
                        prop_assert!(t.failure.is_some());
                    }
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_event_parser(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(event) = serde_json::from_slice::<crate::moment::wire::Event>(&body)
                && let Ok(session) = serde_json::from_value::<Session>(event.data)
            {
                let _ = Effect::of(&session);
            }
        }
    }
}
