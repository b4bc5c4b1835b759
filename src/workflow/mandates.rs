//! Starting a mandate (a `first_in_series` session) and verifying it on the customer's return.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::{events, lease_secs, refusal};
use crate::domain::terms::Terms;
use crate::domain::{ChargeStatus, Mandate, MandateStatus};
use crate::error::ApiError;
use crate::moment::MomentError;
use crate::moment::wire::{
    CheckoutOptions, CreateSessionRequest, NewCustomer, SessionOptions, SessionType,
};
use crate::state::AppState;
use crate::store::charges;
use crate::store::mandates::{self, NewMandate};

/// A validated `POST /mandates`.
#[derive(Debug, Clone)]
pub struct MandateRequest {
    pub amount: i64,
    pub currency: String,
    pub customer_name: String,
    pub customer_email: String,
    pub return_url: Option<String>,
    pub reference: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Checked terms (the explicit ceiling when the merchant gave none).
    pub terms: Terms,
}

/// The mandate, and whether it was there before this request (an idempotent retry).
pub struct Outcome {
    pub mandate: Mandate,
    pub replayed: bool,
}

/// Records the mandate, then opens its Moment session. With an idempotency key, a retry
/// returns the same mandate and never opens a second session.
pub async fn create(
    state: &AppState,
    req: MandateRequest,
    key: Option<String>,
    hash: String,
) -> Result<Outcome, ApiError> {
    if let Some(key) = &key
        && let Some(existing) = mandates::by_idempotency_key(&state.db, key).await?
    {
        return resume(state, existing, &hash).await;
    }
    let new = NewMandate {
        id: Uuid::now_v7(),
        amount: req.amount,
        currency: &req.currency,
        reference: req.reference.as_deref(),
        metadata: &req.metadata,
        customer_name: &req.customer_name,
        customer_email: &req.customer_email,
        return_url: req.return_url.as_deref(),
        terms: &req.terms,
        idempotency_key: key.as_deref(),
        request_hash: &hash,
        lease_secs: lease_secs(state),
    };
    let Some(mandate) = mandates::insert(&state.db, &new).await? else {
        // Another request under the same key got in first.
        let key = key.as_deref().unwrap_or_default();
        let existing = mandates::by_idempotency_key(&state.db, key)
            .await?
            .ok_or(ApiError::IdempotencyInFlight)?;
        return resume(state, existing, &hash).await;
    };
    tracing::info!(mandate_id = %mandate.id, "mandate recorded");
    let mandate = open_session(state, mandate).await?;
    Ok(Outcome {
        mandate,
        replayed: false,
    })
}

/// A retry under a known key: replay, refuse, or take over an abandoned attempt.
async fn resume(state: &AppState, existing: Mandate, hash: &str) -> Result<Outcome, ApiError> {
    if existing.request_hash != hash {
        return Err(ApiError::IdempotencyMismatch);
    }
    if existing.session_id.is_some() || existing.status != MandateStatus::Pending {
        return Ok(Outcome {
            mandate: existing,
            replayed: true,
        });
    }
    let claimed = mandates::claim(&state.db, existing.id, lease_secs(state))
        .await?
        .ok_or(ApiError::IdempotencyInFlight)?;
    let mandate = open_session(state, claimed).await?;
    Ok(Outcome {
        mandate,
        replayed: true,
    })
}

/// Creates the `first_in_series` session under the mandate's own Moment idempotency key.
async fn open_session(state: &AppState, mandate: Mandate) -> Result<Mandate, ApiError> {
    let id = mandate.id.to_string();
    let req = CreateSessionRequest {
        kind: SessionType::FirstInSeries,
        amount: mandate.amount,
        currency: mandate.currency.clone(),
        options: SessionOptions::FirstInSeries {
            customer: NewCustomer {
                name: mandate.customer_name.clone(),
                email: mandate.customer_email.clone(),
            },
            checkout_options: CheckoutOptions {
                return_url: format!("{}/mandates/{id}/return", state.settings.public_url),
            },
            mandate_options: serde_json::to_value(mandate.terms()).ok(),
        },
        external_reference: Some(id.clone()),
        metadata: mandate.metadata.0.clone(),
    };
    match state.moment.create_session(&req, &id).await {
        Ok(session) => {
            if session.session_url.is_none() {
                tracing::warn!(mandate_id = %id, session_id = %session.id, "Moment returned no session_url");
            }
            let recorded = mandates::record_session(&state.db, mandate.id, &session).await?;
            let (recorded, waiting) = (recorded.record, recorded.webhook_waiting);
            tracing::info!(mandate_id = %id, session_id = %session.id, "checkout session opened");
            // A webhook may have beaten this write; apply what it left waiting.
            if waiting && events::apply_deferred(&state.db, Some(&session.id)).await? > 0 {
                return Ok(mandates::by_id(&state.db, mandate.id)
                    .await?
                    .unwrap_or(recorded));
            }
            Ok(recorded)
        }
        Err(MomentError::Rejected { status, problem }) => {
            Ok(mandates::fail(&state.db, mandate.id, &refusal(status, &problem)).await?)
        }
        Err(MomentError::Unavailable { .. }) => {
            mandates::release(&state.db, mandate.id).await?;
            Err(ApiError::MomentUnavailable)
        }
    }
}

/// A revoked mandate, and what became of its open charges.
pub struct Revoked {
    pub mandate: Mandate,
    /// Never sent to Moment: failed with `mandate_revoked`.
    pub failed: Vec<Uuid>,
    /// Sent, with the outcome unknown: not sent again; `needs_review` unless Moment settles
    /// them by webhook or reconciliation.
    pub needs_review: Vec<Uuid>,
    /// Being sent at this moment by a request or the worker: the send in flight completes
    /// (Moment answers it, and it becomes `processing`) or the charge ends as above.
    pub in_flight: Vec<Uuid>,
    /// Already at Moment (`processing`): Moment settles them; nothing here can stop them.
    pub at_moment: Vec<Uuid>,
}

/// Revokes an active mandate (revoking a revoked one changes nothing) and stops its money:
/// after this, nothing of the mandate is sent to Moment again, from any path, because every
/// send checks the mandate right before it goes (`store::charges::begin_send`), except a
/// scheduled charge checked less than 250 ms before and waiting for its slot
/// (`workflow::billing`), which is listed under `in_flight`.
pub async fn revoke(state: &AppState, id: Uuid) -> Result<Revoked, ApiError> {
    let Some(mandate) = mandates::revoke(&state.db, id).await? else {
        return Err(match mandates::by_id(&state.db, id).await? {
            Some(m) => ApiError::Conflict(format!(
                "only an active mandate can be revoked; this one is {}",
                m.status
            )),
            None => ApiError::NotFound("mandate"),
        });
    };
    use crate::workflow::charges::{REVOKED_UNKNOWN, REVOKED_UNSENT, reason_of};
    // The mandate's subscriptions end with it (a scheduler that finds the mandate revoked
    // first cancels them too).
    crate::store::subscriptions::cancel_for_mandate(&state.db, id).await?;
    let settled = charges::settle_revoked(
        &state.db,
        id,
        &reason_of(REVOKED_UNSENT),
        &reason_of(REVOKED_UNKNOWN),
    )
    .await?;
    let mut out = Revoked {
        mandate,
        failed: Vec::new(),
        needs_review: Vec::new(),
        in_flight: Vec::new(),
        at_moment: Vec::new(),
    };
    for (charge_id, status) in settled {
        match status {
            ChargeStatus::Failed => out.failed.push(charge_id),
            _ => out.needs_review.push(charge_id),
        }
    }
    for c in charges::open_for_mandate(&state.db, id).await? {
        match c.status {
            ChargeStatus::Pending => out.in_flight.push(c.id),
            ChargeStatus::Processing => out.at_moment.push(c.id),
            ChargeStatus::NeedsReview if !out.needs_review.contains(&c.id) => {
                out.needs_review.push(c.id)
            }
            _ => {}
        }
    }
    tracing::info!(
        mandate_id = %id,
        failed = out.failed.len(),
        needs_review = out.needs_review.len(),
        in_flight = out.in_flight.len(),
        at_moment = out.at_moment.len(),
        "mandate revoked"
    );
    Ok(out)
}

/// The customer's return fetches a mandate's session from Moment at most once in this many
/// seconds, however often the return is hit.
pub const REFRESH_EVERY_SECS: f64 = 5.0;

/// On the customer's return: fetch the session from Moment and apply it exactly as its
/// webhook would, at most once per mandate every `REFRESH_EVERY_SECS` (on any replica) and
/// with a bounded number of fetches in flight; otherwise, and when Moment is silent, the
/// mandate is answered as it is.
pub async fn refresh(state: &AppState, id: Uuid) -> Result<Mandate, ApiError> {
    let Some(mandate) = mandates::by_id(&state.db, id).await? else {
        return Err(ApiError::NotFound("mandate"));
    };
    if mandate.status != MandateStatus::Pending || mandate.session_id.is_none() {
        return Ok(mandate);
    }
    let Ok(_slot) = state.return_fetches.try_acquire() else {
        tracing::info!(mandate_id = %id, "too many checkout returns in flight; answering without asking Moment");
        return Ok(mandate);
    };
    let Some(claimed) = mandates::claim_refresh(&state.db, id, REFRESH_EVERY_SECS).await? else {
        return Ok(mandate);
    };
    let session_id = claimed.session_id.clone().unwrap_or_default();
    match state.moment.get_session(&session_id).await {
        Ok(session) => {
            if events::apply_snapshot(&state.db, &session).await? == events::Applied::Moved {
                return Ok(mandates::by_id(&state.db, id).await?.unwrap_or(claimed));
            }
        }
        Err(e) => {
            tracing::warn!(mandate_id = %id, error = %e, "could not verify the checkout on return")
        }
    }
    Ok(claimed)
}
