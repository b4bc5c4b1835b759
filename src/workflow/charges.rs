//! Charging a mandate (a `next_in_series` session): exactly once, whatever fails on the way.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use uuid::Uuid;

use super::{events, refusal, terms};
use crate::api::ChargeResponse;
use crate::domain::{Charge, ChargeStatus, MandateStatus};
use crate::error::ApiError;
use crate::moment::Attempt;
use crate::moment::wire::{CreateSessionRequest, Session, SessionOptions, SessionType};
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
    /// Only check the terms; record and send nothing.
    pub dry_run: bool,
    /// For a scheduled charge: its subscription, period and attempt, and the scheduler's
    /// lease on the subscription.
    pub subscription: Option<(Uuid, i32, i32, Uuid)>,
}

/// The answer for the merchant: status, body, and whether it is a replay.
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub replayed: bool,
}

/// Records the charge under the merchant's key, sends it to Moment, and keeps the answer so
/// that a retry under the same key gets the same one without a second call to Moment. The
/// charge is first held to the mandate's terms; a breach is a `mandate-terms` 422 and records
/// nothing. With `dry_run`, only the terms are checked.
pub async fn create(
    state: &AppState,
    req: ChargeRequest,
    key: Option<String>,
    hash: String,
) -> Result<Answer, ApiError> {
    let now = state.clock.now();
    if req.dry_run {
        return dry_run(state, &req, now).await;
    }
    let key =
        key.ok_or_else(|| ApiError::malformed("Idempotency-Key", "this header is required"))?;
    let token = Uuid::new_v4();
    let mut new = NewCharge {
        id: Uuid::now_v7(),
        mandate_id: req.mandate_id,
        amount: req.amount,
        currency: req.currency.as_deref(),
        reference: req.reference.as_deref(),
        metadata: &req.metadata,
        idempotency_key: &key,
        request_hash: &hash,
        lease_secs: send_lease_secs(state),
        lease_token: token,
        billed_at: now,
        subscription: req.subscription,
    };
    let Some(mandate) = mandates::by_id(&state.db, req.mandate_id).await? else {
        return Err(ApiError::NotFound("mandate"));
    };
    let terms = mandate.terms();
    let amount = req.amount.unwrap_or(mandate.amount);
    let inserted = if !state.settings.local_terms_check {
        // Tests only: the charge goes to Moment whatever the terms say.
        charges::insert(&state.db, &new).await?
    } else if terms.counts() {
        // A retry is answered from the charge it made, whatever the terms say now.
        if let Some(existing) = charges::by_idempotency_key(&state.db, &key).await? {
            return resume(state, existing, &hash).await;
        }
        // Counted terms: checked and recorded with the mandate's row locked, so that
        // concurrent charges cannot pass a limit together.
        let mut tx = state.db.begin().await?;
        let locked = mandates::lock_active(&mut *tx, req.mandate_id).await?;
        // A retry that raced its first request here: answered from the charge it made.
        if let Some(existing) = charges::by_idempotency_key(&mut *tx, &key).await? {
            drop(tx);
            return resume(state, existing, &hash).await;
        }
        let Some(locked) = locked else {
            drop(tx);
            return Err(refuse(state, &req).await?);
        };
        // The billing clock read inside the lock: the charge is recorded at this very instant
        // (`billed_at`), so it is counted in the window it was checked in, and any charge
        // recorded before it holds an earlier time.
        let at = state.clock.now();
        new.billed_at = at;
        terms::check(&mut tx, &locked, amount, at).await?;
        let inserted = charges::insert(&mut *tx, &new).await?;
        tx.commit().await?;
        inserted
    } else {
        // The usual case costs one statement: the charge is recorded with the mandate's checks.
        if let Err(e) = terms::check_static(&terms, amount, now) {
            if let Some(existing) = charges::by_idempotency_key(&state.db, &key).await? {
                return resume(state, existing, &hash).await;
            }
            return Err(e);
        }
        charges::insert(&state.db, &new).await?
    };
    let Some(charge) = inserted else {
        // A retry under a known key, or a mandate that does not qualify: say which.
        if let Some(existing) = charges::by_idempotency_key(&state.db, &key).await? {
            return resume(state, existing, &hash).await;
        }
        return Err(refuse(state, &req).await?);
    };
    tracing::info!(charge_id = %charge.id, mandate_id = %charge.mandate_id, "charge recorded");
    let charge = send(state, charge, token).await?;
    answer(state, &charge, false).await
}

/// Whether the charge would pass: the same checks and the same problem, nothing recorded.
async fn dry_run(
    state: &AppState,
    req: &ChargeRequest,
    now: time::OffsetDateTime,
) -> Result<Answer, ApiError> {
    let mandate = match mandates::by_id(&state.db, req.mandate_id).await? {
        Some(m)
            if m.status == MandateStatus::Active
                && req.currency.as_ref().is_none_or(|c| *c == m.currency) =>
        {
            m
        }
        _ => return Err(refuse(state, req).await?),
    };
    let amount = req.amount.unwrap_or(mandate.amount);
    let mut conn = state.db.acquire().await?;
    terms::check(&mut conn, &mandate, amount, now).await?;
    Ok(Answer {
        status: 200,
        body: json!({
            "dry_run": true, "passes": true, "mandate_id": mandate.id,
            "amount": amount, "currency": mandate.currency,
        }),
        replayed: false,
    })
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
    // answering: finish the job under the same Moment key, if it still may be sent (`send`
    // checks the mandate and Moment's idempotency window before calling Moment).
    if existing.status != ChargeStatus::Pending {
        return answer(state, &existing, true).await;
    }
    let token = Uuid::new_v4();
    let claimed = charges::claim(&state.db, existing.id, send_lease_secs(state), token)
        .await?
        .ok_or(ApiError::IdempotencyInFlight)?;
    let charge = send(state, claimed, token).await?;
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

/// How long one send holds a charge (seconds): twice one attempt's timeout, and a margin.
/// The lease is renewed right before each attempt, so it covers one attempt at a time.
pub fn send_lease_secs(state: &AppState) -> f64 {
    2.0 * state.moment.attempt_timeout().as_secs_f64() + 5.0
}

/// What the charge's send came to, for the record.
fn reason(code: &str, message: &str) -> Value {
    json!({ "code": code, "message": message })
}

/// Why a charge that can no longer be sent ends: `(code, message)`, for those Moment never saw
/// (failed) and those it may have (needs review), after a revocation and past the window. One
/// wording for every path that ends them (a send, a revoke, the worker).
pub const REVOKED_UNSENT: (&str, &str) = (
    "mandate_revoked",
    "the mandate was revoked before the charge was sent",
);
pub const REVOKED_UNKNOWN: (&str, &str) = (
    "mandate_revoked_outcome_unknown",
    "the mandate was revoked after a send whose answer never came; it is not sent again",
);
pub const SUBSCRIPTION_ENDED: (&str, &str) = (
    "subscription_ended",
    "the subscription was paused or cancelled before the charge was sent",
);
pub const SUBSCRIPTION_ENDED_UNKNOWN: (&str, &str) = (
    "subscription_ended_outcome_unknown",
    "the subscription was paused or cancelled after a send whose answer never came; it is not sent again",
);
pub const WINDOW_UNSENT: (&str, &str) = (
    "send_window_passed",
    "the charge could not be sent within 23 hours, inside Moment's 24-hour idempotency window",
);
pub const WINDOW_UNKNOWN: (&str, &str) = (
    "idempotency_window_passed",
    "Moment forgets the charge's idempotency key after 24 hours, so it cannot be sent again safely; look it up at Moment",
);

/// `(code, message)` as the JSON a charge records.
pub fn reason_of((code, message): (&str, &str)) -> Value {
    reason(code, message)
}

/// Sends a charge the caller holds the lease of (`token`) to Moment, under the charge's own
/// key, and records what came of it.
///
/// Before each attempt the lease is renewed and the send counted in one statement that also
/// checks the charge may still be sent: still pending, its mandate still active, and within
/// Moment's idempotency window. After a send whose outcome is unknown, nothing is taken for a
/// refusal but a clean one (400, 402, 422) of the first send, or one Moment replays; a
/// replayed error is final (Moment repeats it for 24 h). Moment's silence leaves the charge
/// pending, to be sent again later, after any `Retry-After`.
pub async fn send(state: &AppState, mut charge: Charge, token: Uuid) -> sqlx::Result<Charge> {
    let id = charge.id.to_string();
    let req = session_request(&charge);
    let policy = state.moment.policy();
    let mut attempt = 1;
    loop {
        let lease = send_lease_secs(state);
        match charges::begin_send(&state.db, charge.id, token, lease, RESEND_WINDOW_SECS).await? {
            Some(c) => charge = c,
            None => return unsendable(state, charge.id, token).await,
        }
        let (reason_text, retry_after, replayed) =
            match state.moment.create_session_once(&req, &id).await {
                Attempt::Session { session, .. } => {
                    return accepted(state, &charge, token, &session).await;
                }
                Attempt::Refused {
                    status,
                    problem,
                    replayed,
                } if replayed || charge.sends == 1 => {
                    tracing::warn!(charge_id = %id, status, replayed, "charge refused by Moment");
                    let failure = refusal(status, &problem);
                    let failed = charges::fail(&state.db, charge.id, token, &failure).await?;
                    return settled(state, charge.id, failed).await;
                }
                Attempt::Refused { status, .. } => {
                    // A refusal after a send whose outcome is unknown may be of a request that
                    // already took effect: the outcome stays unknown.
                    (
                        format!("HTTP {status} after an unanswered send"),
                        None,
                        false,
                    )
                }
                Attempt::Unknown {
                    reason,
                    retry_after,
                    replayed,
                    ..
                } => (reason, retry_after, replayed),
            };
        if replayed {
            tracing::warn!(charge_id = %id, reason = reason_text, "Moment replays an error for this charge; it needs review");
            let review = reason(
                "moment_replayed_error",
                &format!(
                    "Moment answers {reason_text} for this charge's key, and will for 24 hours"
                ),
            );
            let marked = charges::needs_review(&state.db, charge.id, token, &review);
            return settled(state, charge.id, marked.await?).await;
        }
        let wait = state.moment.backoff(attempt, retry_after);
        match wait {
            Some(wait) if attempt < policy.max_attempts => {
                // Hold the charge through the wait, so that nobody else sends meanwhile.
                let held = wait.as_secs_f64() + send_lease_secs(state);
                if !charges::hold(&state.db, charge.id, token, held).await? {
                    return current(state, charge.id).await;
                }
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            _ => {
                let delay =
                    resend_delay(charge.attempts).max(retry_after.map_or(0.0, |d| d.as_secs_f64()));
                tracing::warn!(charge_id = %id, reason = reason_text, delay_secs = delay, "charge outcome unknown; will resend");
                let deferred = charges::defer(&state.db, charge.id, token, delay);
                return settled(state, charge.id, deferred.await?).await;
            }
        }
    }
}

/// The `next_in_series` session a charge asks Moment for: the same body on every send, under
/// the charge's id as Moment's idempotency key.
pub(super) fn session_request(charge: &Charge) -> CreateSessionRequest {
    CreateSessionRequest {
        kind: SessionType::NextInSeries,
        amount: charge.amount,
        currency: charge.currency.clone(),
        options: SessionOptions::NextInSeries {
            customer: charge.customer_id.clone(),
            payment_method: charge.payment_method_id.clone(),
        },
        external_reference: Some(charge.id.to_string()),
        metadata: charge.metadata.0.clone(),
    }
}

/// The charge as it is now (after a fenced write found the lease taken over).
async fn current(state: &AppState, id: Uuid) -> sqlx::Result<Charge> {
    charges::by_id(&state.db, id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)
}

/// The fenced write's result, or the charge as it is now when the lease was no longer ours.
async fn settled(state: &AppState, id: Uuid, written: Option<Charge>) -> sqlx::Result<Charge> {
    match written {
        Some(c) => Ok(c),
        None => {
            tracing::info!(charge_id = %id, "the charge's lease was taken over; leaving it to its holder");
            current(state, id).await
        }
    }
}

/// Moment has a session for the charge: record it, unless it is not the charge's own.
async fn accepted(
    state: &AppState,
    charge: &Charge,
    token: Uuid,
    session: &Session,
) -> sqlx::Result<Charge> {
    let id = charge.id.to_string();
    if let Some(what) = mismatch(charge, session, state.moment.mode()) {
        tracing::warn!(charge_id = %id, session_id = %session.id, what, "Moment's answer does not match the charge; it needs review");
        let review = reason(
            "moment_answer_mismatch",
            &format!("Moment answered with a session whose {what} is not the charge's"),
        );
        let marked = charges::needs_review(&state.db, charge.id, token, &review);
        return settled(state, charge.id, marked.await?).await;
    }
    let Some(recorded) = charges::record_session(&state.db, charge.id, token, session).await?
    else {
        return current(state, charge.id).await;
    };
    let (mut recorded, waiting) = (recorded.record, recorded.webhook_waiting);
    tracing::info!(charge_id = %id, session_id = %session.id, "charge accepted by Moment");
    // The answer may already carry the outcome, and a webhook may have beaten us here.
    let moved = events::apply_snapshot(&state.db, session).await? == events::Applied::Moved;
    let applied = waiting && events::apply_deferred(&state.db, Some(&session.id)).await? > 0;
    if applied || moved {
        recorded = charges::by_id(&state.db, charge.id)
            .await?
            .unwrap_or(recorded);
    }
    Ok(recorded)
}

/// What in Moment's answer is not the charge's: its reference, mode, amount or currency.
pub(super) fn mismatch(charge: &Charge, session: &Session, mode: &str) -> Option<&'static str> {
    let id = charge.id.to_string();
    if session
        .external_reference
        .as_deref()
        .is_some_and(|r| r != id)
    {
        Some("external_reference")
    } else if session.mode.as_deref().is_some_and(|m| m != mode) {
        Some("mode")
    } else if session.amount.is_some_and(|a| a != charge.amount) {
        Some("amount")
    } else if session
        .currency
        .as_deref()
        .is_some_and(|c| c != charge.currency)
    {
        Some("currency")
    } else {
        None
    }
}

/// `begin_send` refused: the charge settled meanwhile, its lease was taken over, its mandate
/// is no longer active, or Moment's idempotency window has passed. Nothing is sent; a charge
/// Moment never saw fails, one it may have seen needs review.
async fn unsendable(state: &AppState, id: Uuid, token: Uuid) -> sqlx::Result<Charge> {
    let charge = current(state, id).await?;
    if charge.status != ChargeStatus::Pending || charge.lease_token != Some(token) {
        return Ok(charge);
    }
    let mandate_active = mandates::by_id(&state.db, charge.mandate_id)
        .await?
        .is_some_and(|m| m.status == MandateStatus::Active);
    let subscription_live = match charge.subscription_id {
        None => true,
        Some(s) => crate::store::subscriptions::by_id(&state.db, s)
            .await?
            .is_some_and(|s| {
                matches!(
                    s.status,
                    crate::domain::SubscriptionStatus::Active
                        | crate::domain::SubscriptionStatus::PastDue
                )
            }),
    };
    let written = match (mandate_active, charge.sends) {
        (true, 0) if !subscription_live => {
            tracing::info!(charge_id = %id, "the subscription has ended; the charge is not sent");
            charges::fail(&state.db, id, token, &reason_of(SUBSCRIPTION_ENDED)).await?
        }
        (true, _) if !subscription_live => {
            tracing::warn!(charge_id = %id, "the subscription was paused or cancelled after a send whose answer never came; the charge needs review");
            charges::needs_review(&state.db, id, token, &reason_of(SUBSCRIPTION_ENDED_UNKNOWN))
                .await?
        }
        (false, 0) => {
            tracing::info!(charge_id = %id, "the mandate is no longer active; the charge is not sent");
            charges::fail(&state.db, id, token, &reason_of(REVOKED_UNSENT)).await?
        }
        (false, _) => {
            tracing::warn!(charge_id = %id, "the mandate is no longer active after a send whose answer never came; the charge needs review");
            charges::needs_review(&state.db, id, token, &reason_of(REVOKED_UNKNOWN)).await?
        }
        (true, 0) => charges::fail(&state.db, id, token, &reason_of(WINDOW_UNSENT)).await?,
        (true, _) => {
            tracing::warn!(charge_id = %id, "Moment's idempotency window has passed with the outcome unknown; the charge needs review");
            charges::needs_review(&state.db, id, token, &reason_of(WINDOW_UNKNOWN)).await?
        }
    };
    settled(state, id, written).await
}

/// Seconds before the worker resends a charge after `attempts` unanswered sends: 5 s
/// doubling to at most 10 minutes, with ±20% jitter so a Moment outage does not end in a
/// thundering herd.
fn resend_delay(attempts: i32) -> f64 {
    let base = (5.0 * 2f64.powi(attempts.clamp(0, 10))).min(600.0);
    base * (0.8 + 0.4 * fastrand::f64())
}
