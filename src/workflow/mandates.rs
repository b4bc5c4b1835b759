//! Starting a mandate (a `first_in_series` session) and verifying it on the customer's return.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::{events, lease_secs, refusal};
use crate::domain::{Mandate, MandateStatus};
use crate::error::ApiError;
use crate::moment::MomentError;
use crate::moment::wire::{
    CheckoutOptions, CreateSessionRequest, NewCustomer, SessionOptions, SessionType,
};
use crate::state::AppState;
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
        Err(MomentError::Unavailable(_)) => {
            mandates::release(&state.db, mandate.id).await?;
            Err(ApiError::MomentUnavailable)
        }
    }
}

/// On the customer's return: fetch the session from Moment and apply it exactly as its
/// webhook would. Moment's silence leaves the mandate as it is.
pub async fn refresh(state: &AppState, id: Uuid) -> Result<Mandate, ApiError> {
    let mandate = mandates::by_id(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound("mandate"))?;
    let Some(session_id) = mandate
        .session_id
        .as_deref()
        .filter(|_| mandate.status == MandateStatus::Pending)
    else {
        return Ok(mandate);
    };
    match state.moment.get_session(session_id).await {
        Ok(session) => {
            if events::apply_snapshot(&state.db, &session).await? == events::Applied::Moved {
                return Ok(mandates::by_id(&state.db, id).await?.unwrap_or(mandate));
            }
        }
        Err(e) => {
            tracing::warn!(mandate_id = %id, error = %e, "could not verify the checkout on return")
        }
    }
    Ok(mandate)
}
