//! Subscriptions as the merchant manages them: created on an active mandate with a schedule
//! that follows the mandate's consent (`schedules`), shown with a preview of the next charges, paused,
//! resumed, cancelled and re-priced within the terms. Billing itself is `scheduler`'s.

use time::OffsetDateTime;
use uuid::Uuid;

use super::schedules::{CreateRequest, resolve};
use super::terms;
use crate::api::SubscriptionResponse;
use crate::domain::schedule::local_day;
use crate::domain::subscription;
use crate::domain::{MandateStatus, Subscription, SubscriptionStatus};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::subscriptions::{self as store, Change, NewSubscription};
use crate::store::{charges, mandates};

/// Charges shown in a subscription's preview.
pub const PREVIEW: usize = 12;

/// The mandate's other subscriptions a preview counts, at most: each previewed charge is
/// checked against the charges before it, so the work of a preview stays bounded however many
/// subscriptions a mandate carries.
const SIBLINGS: i64 = 100;
/// The periods of one other subscription a preview counts, at most.
const SIBLING_CHARGES: usize = 400;
/// The other subscriptions' charges a preview counts, at most (the earliest).
const OTHERS: usize = 1000;

/// Creates a subscription under the merchant's key (a retry with the same key and body gets
/// the same subscription; with another body, `422`). The amount must keep to the mandate's
/// terms; the first period is the first on or after `start_date` that has not yet passed.
pub async fn create(
    state: &AppState,
    req: CreateRequest,
    key: String,
    hash: String,
) -> Result<(Subscription, bool), ApiError> {
    if let Some(existing) = store::by_idempotency_key(&state.db, &key).await? {
        return replay(existing, &hash);
    }
    let mandate = mandates::by_id(&state.db, req.mandate_id)
        .await?
        .ok_or(ApiError::NotFound("mandate"))?;
    if mandate.status != MandateStatus::Active {
        return Err(ApiError::Conflict(format!(
            "the mandate is {}, not active",
            mandate.status
        )));
    }
    let terms = mandate.terms();
    let amount = match (req.amount, terms.amount) {
        (Some(a), _) => a,
        (None, Some(crate::domain::terms::AmountRule::Fixed(a))) => a,
        (None, _) if mandate.amount > 0 => mandate.amount,
        (None, _) => {
            return Err(ApiError::invalid(
                "amount",
                "is required: the mandate has no fixed amount to bill",
            ));
        }
    };
    if amount <= 0 {
        return Err(ApiError::invalid("amount", "must be at least 1"));
    }
    let now = state.clock.now();
    terms::check_amount(&terms, amount)?;
    let today = local_day(now, state.settings.billing.offset);
    let mut spec = resolve(state, &mandate, &req, today)?;
    let mut schedule = spec
        .schedule()
        .map_err(|e| ApiError::invalid("interval", e))?;
    // A first period whose time has already passed (today, after `charge_time`) is not billed,
    // and does not count toward `count` either: the schedule starts on its first billed
    // period's nominal day (the day before any weekend adjustment: started on the adjusted
    // day, a Monday the 3rd say, the schedule would begin at the next month's 1st). The anchor
    // is already resolved, so it does not move.
    if let Some(day) = schedule
        .first_due_at_or_after(now)
        .filter(|n| *n > 0)
        .filter(|n| schedule.at(*n).is_some())
        .and_then(|n| schedule.nominal_day(n))
    {
        spec.start_date = day;
        schedule = spec
            .schedule()
            .map_err(|e| ApiError::invalid("interval", e))?;
    }
    let first = schedule
        .first_due_at_or_after(now)
        .and_then(|n| Some((n as i32, schedule.at(n)?)));
    let new = NewSubscription {
        id: Uuid::now_v7(),
        mandate_id: mandate.id,
        amount,
        currency: &mandate.currency,
        schedule: &spec,
        reference: req.reference.as_deref(),
        metadata: &req.metadata,
        idempotency_key: &key,
        request_hash: &hash,
        first,
    };
    match store::insert(&state.db, &new).await? {
        Some(s) => {
            tracing::info!(subscription_id = %s.id, mandate_id = %s.mandate_id, "subscription created");
            Ok((s, false))
        }
        None => match store::by_idempotency_key(&state.db, &key).await? {
            Some(existing) => replay(existing, &hash),
            None => Err(ApiError::Conflict("the mandate is no longer active".into())),
        },
    }
}

fn replay(existing: Subscription, hash: &str) -> Result<(Subscription, bool), ApiError> {
    if existing.request_hash != hash {
        return Err(ApiError::IdempotencyMismatch);
    }
    Ok((existing, true))
}

/// The subscription as the API shows it, with the preview of its next charges held to its
/// mandate's terms as they stand now.
pub async fn view(state: &AppState, s: &Subscription) -> Result<SubscriptionResponse, ApiError> {
    let mut out = SubscriptionResponse::from(s);
    if !matches!(
        s.status,
        SubscriptionStatus::Active | SubscriptionStatus::PastDue
    ) {
        return Ok(out);
    }
    let Ok(schedule) = s.schedule.0.schedule() else {
        return Ok(out);
    };
    let Some(mandate) = mandates::by_id(&state.db, s.mandate_id).await? else {
        return Ok(out);
    };
    let terms = mandate.terms();
    let now = state.clock.now();
    let mut conn = state.db.acquire().await?;
    let ledger = terms::ledger(&mut conn, &mandate, now).await?;
    // What counts from the current window on: charges that succeeded or may still succeed.
    let since = terms
        .period_limits
        .as_ref()
        .map(|l| {
            let (start, _) = crate::domain::terms::window(l, crate::domain::terms::sast_day(now));
            crate::domain::terms::sast_midnight(start)
        })
        .unwrap_or(now);
    let mut counted = charges::counted_since(&mut *conn, mandate.id, since).await?;
    if mandate.amount > 0 && mandate.created_at >= since {
        counted.push((mandate.created_at, mandate.amount));
    }
    let from = s.next_period.max(0) as u32;
    // The mandate's other subscriptions are held to the same terms, counted together: their
    // charges due up to this one's last previewed charge take their share first.
    let mut others = Vec::new();
    if let Some((_, horizon)) = schedule.preview(from, PREVIEW).last().copied() {
        let siblings: Vec<subscription::Sibling> =
            store::live_siblings(&mut *conn, mandate.id, s.id, SIBLINGS)
                .await?
                .into_iter()
                .filter_map(|o| {
                    Some(subscription::Sibling {
                        schedule: o.schedule.0.schedule().ok()?,
                        from: o.next_period.max(0) as u32,
                        amount: o.amount,
                        retry_at: o
                            .retry_at
                            .filter(|_| o.status == SubscriptionStatus::PastDue),
                        resumes_at: o
                            .resume_at
                            .filter(|_| o.status == SubscriptionStatus::Paused),
                    })
                })
                .collect();
        others = subscription::others_due(&siblings, horizon, SIBLING_CHARGES, OTHERS);
    }
    out.preview = Some(subscription::preview(
        &schedule,
        from,
        PREVIEW,
        s.amount,
        &terms,
        subscription::Counting {
            used: ledger.occurrences_used,
            counted: &counted,
            others: &others,
        },
    ));
    Ok(out)
}

/// Pauses billing (and any dunning) until resumed, or until `resume_at`.
pub async fn pause(
    state: &AppState,
    id: Uuid,
    resume_at: Option<OffsetDateTime>,
) -> Result<Subscription, ApiError> {
    store::by_id(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound("subscription"))?;
    if resume_at.is_some_and(|t| t <= state.clock.now()) {
        return Err(ApiError::invalid("resume_at", "must be in the future"));
    }
    let change = Change {
        status: Some(SubscriptionStatus::Paused),
        resume_at: Some(resume_at),
        end_dunning: true,
        ..Change::default()
    };
    apply(
        state,
        id,
        &[SubscriptionStatus::Active, SubscriptionStatus::PastDue],
        &change,
    )
    .await
}

/// Resumes a paused subscription from its next period due from now on: periods that fell
/// due while paused are not charged, and the anchor does not move.
pub async fn resume(state: &AppState, id: Uuid) -> Result<Subscription, ApiError> {
    let s = store::by_id(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound("subscription"))?;
    resume_row(state, &s).await
}

/// Resumes `s` (paused) at the first period due from now on.
pub async fn resume_row(state: &AppState, s: &Subscription) -> Result<Subscription, ApiError> {
    let schedule = s
        .schedule
        .0
        .schedule()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!(e)))?;
    // No period left from now on: the subscription is finished, nothing is caught up.
    let (n, at) = match schedule.first_due_at_or_after(state.clock.now()) {
        Some(n) => {
            let n = (n as i32).max(s.next_period);
            (n, schedule.at(n as u32))
        }
        None => (s.next_period, None),
    };
    let change = Change {
        status: Some(if at.is_some() {
            SubscriptionStatus::Active
        } else {
            SubscriptionStatus::Finished
        }),
        resume_at: Some(None),
        next: Some((n, at)),
        end_dunning: true,
        ..Change::default()
    };
    apply(state, s.id, &[SubscriptionStatus::Paused], &change).await
}

/// Cancels now, or at the end of the current period (before its next charge).
pub async fn cancel(
    state: &AppState,
    id: Uuid,
    at_period_end: bool,
) -> Result<Subscription, ApiError> {
    let live = [
        SubscriptionStatus::Active,
        SubscriptionStatus::PastDue,
        SubscriptionStatus::Paused,
    ];
    let change = if at_period_end {
        Change {
            cancel_at_period_end: Some(true),
            ..Change::default()
        }
    } else {
        Change {
            status: Some(SubscriptionStatus::Cancelled),
            end_dunning: true,
            ..Change::default()
        }
    };
    apply(state, id, &live, &change).await
}

/// Changes the amount of the next charges, within the mandate's terms.
pub async fn set_amount(state: &AppState, id: Uuid, amount: i64) -> Result<Subscription, ApiError> {
    let s = store::by_id(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound("subscription"))?;
    let mandate = mandates::by_id(&state.db, s.mandate_id)
        .await?
        .ok_or(ApiError::NotFound("mandate"))?;
    let terms = mandate.terms();
    terms::check_amount(&terms, amount)?;
    let change = Change {
        amount: Some(amount),
        ..Change::default()
    };
    let live = [
        SubscriptionStatus::Active,
        SubscriptionStatus::PastDue,
        SubscriptionStatus::Paused,
    ];
    apply(state, id, &live, &change).await
}

async fn apply(
    state: &AppState,
    id: Uuid,
    from: &[SubscriptionStatus],
    change: &Change,
) -> Result<Subscription, ApiError> {
    match store::change(&state.db, id, from, change).await? {
        Some(s) => Ok(s),
        None => {
            let s = store::by_id(&state.db, id)
                .await?
                .ok_or(ApiError::NotFound("subscription"))?;
            Err(ApiError::Conflict(format!(
                "the subscription is {}",
                s.status
            )))
        }
    }
}
