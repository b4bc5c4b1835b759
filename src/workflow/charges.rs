//! Charging a mandate (a `next_in_series` session): exactly once, whatever fails on the way.

use std::collections::BTreeMap;

use serde_json::Value;
use uuid::Uuid;

use super::{events, lease_secs, refusal};
use crate::api::ChargeResponse;
use crate::domain::{Charge, ChargeStatus, MandateStatus};
use crate::error::ApiError;
use crate::moment::MomentError;
use crate::moment::wire::{CreateSessionRequest, SessionOptions, SessionType};
use crate::state::AppState;
use crate::store::charges::{self, NewCharge};
use crate::store::mandates;

/// Moment keeps idempotency keys 24 hours; a charge is resent under its key only within this
/// window (seconds), leaving an hour of margin. Past it, a pending charge waits for its
/// webhook or an operator, because a resend could charge twice.
pub const RESEND_WINDOW_SECS: f64 = 23.0 * 3600.0;

/// A validated `POST /charges`.
#[derive(Debug, Clone)]
pub struct ChargeRequest {
    pub mandate_id: Uuid,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub reference: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// The answer for the merchant: status, body, and whether it is a replay.
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub replayed: bool,
}

/// Records the charge under the merchant's key, sends it to Moment, and keeps the answer so
/// that a retry under the same key gets the same one without a second call to Moment.
pub async fn create(
    state: &AppState,
    req: ChargeRequest,
    key: String,
    hash: String,
) -> Result<Answer, ApiError> {
    // The usual case costs one statement: the charge is recorded with the mandate's checks.
    let new = NewCharge {
        id: Uuid::now_v7(),
        mandate_id: req.mandate_id,
        amount: req.amount,
        currency: req.currency.as_deref(),
        reference: req.reference.as_deref(),
        metadata: &req.metadata,
        idempotency_key: &key,
        request_hash: &hash,
        lease_secs: lease_secs(state),
    };
    let Some(charge) = charges::insert(&state.db, &new).await? else {
        // A retry under a known key, or a mandate that does not qualify: say which.
        if let Some(existing) = charges::by_idempotency_key(&state.db, &key).await? {
            return resume(state, existing, &hash).await;
        }
        return Err(refuse(state, &req).await?);
    };
    tracing::info!(charge_id = %charge.id, mandate_id = %charge.mandate_id, "charge recorded");
    let charge = send(state, charge).await?;
    answer(state, &charge, false).await
}

/// Why `req`'s mandate cannot be charged.
async fn refuse(state: &AppState, req: &ChargeRequest) -> Result<ApiError, ApiError> {
    let mandate = mandates::by_id(&state.db, req.mandate_id)
        .await?
        .ok_or(ApiError::NotFound("mandate"))?;
    Ok(if mandate.status != MandateStatus::Active {
        ApiError::Conflict(format!("the mandate is {}, not active", mandate.status))
    } else if req
        .currency
        .as_ref()
        .is_some_and(|c| *c != mandate.currency)
    {
        ApiError::invalid(
            "currency",
            format!("the mandate is in {}", mandate.currency),
        )
    } else if mandate.customer_id.is_none() || mandate.payment_method_id.is_none() {
        ApiError::Conflict("the mandate has no saved payment method".into())
    } else {
        // It qualified a moment ago and qualifies again now: it changed in between.
        ApiError::Conflict("the mandate changed while the charge was recorded; retry".into())
    })
}

/// A retry under a known key.
async fn resume(state: &AppState, existing: Charge, hash: &str) -> Result<Answer, ApiError> {
    if existing.request_hash != hash {
        return Err(ApiError::IdempotencyMismatch);
    }
    if let (Some(status), Some(body)) = (existing.response_status, &existing.response_body)
        && status != 202
    {
        return Ok(Answer {
            status: status as u16,
            body: body.0.clone(),
            replayed: true,
        });
    }
    // The first answer was "outcome unknown" (202), or the first request died before
    // answering: finish the job under the same Moment key.
    if existing.status != ChargeStatus::Pending {
        return answer(state, &existing, true).await;
    }
    let claimed = charges::claim(&state.db, existing.id, lease_secs(state))
        .await?
        .ok_or(ApiError::IdempotencyInFlight)?;
    let charge = send(state, claimed).await?;
    answer(state, &charge, true).await
}

async fn answer(state: &AppState, charge: &Charge, replayed: bool) -> Result<Answer, ApiError> {
    let status = charge.http_status();
    let body = serde_json::to_value(ChargeResponse::from(charge)).map_err(anyhow::Error::from)?;
    charges::store_response(&state.db, charge.id, status, &body).await?;
    Ok(Answer {
        status,
        body,
        replayed,
    })
}

/// Sends a charge the caller holds the lease of to Moment, under the charge's own key, and
/// records what came of it. Moment's silence leaves it pending, to be sent again later.
pub async fn send(state: &AppState, charge: Charge) -> sqlx::Result<Charge> {
    let id = charge.id.to_string();
    let req = CreateSessionRequest {
        kind: SessionType::NextInSeries,
        amount: charge.amount,
        currency: charge.currency.clone(),
        options: SessionOptions::NextInSeries {
            customer: charge.customer_id.clone(),
            payment_method: charge.payment_method_id.clone(),
        },
        external_reference: Some(id.clone()),
        metadata: charge.metadata.0.clone(),
    };
    match state.moment.create_session(&req, &id).await {
        Ok(session) => {
            let recorded = charges::record_session(&state.db, charge.id, &session).await?;
            let (mut recorded, waiting) = (recorded.record, recorded.webhook_waiting);
            tracing::info!(charge_id = %id, session_id = %session.id, "charge accepted by Moment");
            // The answer may already carry the outcome, and a webhook may have beaten us here.
            let moved =
                events::apply_snapshot(&state.db, &session).await? == events::Applied::Moved;
            let applied =
                waiting && events::apply_deferred(&state.db, Some(&session.id)).await? > 0;
            if applied || moved {
                recorded = charges::by_id(&state.db, charge.id)
                    .await?
                    .unwrap_or(recorded);
            }
            Ok(recorded)
        }
        Err(MomentError::Rejected { status, problem }) => {
            tracing::warn!(charge_id = %id, status, "charge refused by Moment");
            charges::fail(&state.db, charge.id, &refusal(status, &problem)).await
        }
        Err(MomentError::Unavailable(reason)) => {
            let delay = resend_delay(charge.attempts);
            tracing::warn!(charge_id = %id, reason, delay_secs = delay, "charge outcome unknown; will resend");
            charges::defer(&state.db, charge.id, delay).await
        }
    }
}

/// Seconds before the worker resends a charge after `attempts` unanswered sends: 5 s
/// doubling to at most 10 minutes, with ±20% jitter so a Moment outage does not end in a
/// thundering herd.
fn resend_delay(attempts: i32) -> f64 {
    let base = (5.0 * 2f64.powi(attempts.clamp(0, 10))).min(600.0);
    base * (0.8 + 0.4 * fastrand::f64())
}
