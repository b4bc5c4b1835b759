//! The scheduler's charges in batches, for the day most subscriptions fall due: one statement
//! records a batch of charges, their calls to Moment go out side by side, and one statement
//! records Moment's answers and moves the subscriptions on. What the batch cannot take (a
//! retry, a cancellation at period end, terms that count payments or refuse the charge, a
//! charge already made for the period, an answer Moment did not give) is left to the
//! one-at-a-time path, which is the same code as `POST /charges`.
//!
//! The guarantees are those of the single path: a charge is recorded under the key
//! `subscription:<id>:<period>:0` before Moment is called, sent under the charge's id as
//! Moment's idempotency key, and written only by the holder of its lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use uuid::Uuid;

use super::charges::{RESEND_WINDOW_SECS, mismatch, send, send_lease_secs, session_request};
use super::{events, terms};
use crate::domain::{Charge, Subscription};
use crate::moment::Attempt;
use crate::moment::wire::{Session, SessionStatus};
use crate::state::AppState;
use crate::store::charges::{self, Accepted, Scheduled};
use crate::store::{mandates, subscriptions};

/// The longest a charge may wait for its slot after its check began; past it, it is checked
/// again.
const FRESH: Duration = Duration::from_millis(250);

/// After a check has gone stale, how long checks go back into the slots (right before their
/// calls) before checking ahead is tried again.
const BACK_OFF: Duration = Duration::from_secs(5);

/// The scheduler's calls to Moment in one pass: at most `concurrency` at a time, and until
/// when checks stay in the slots because one ahead of them went stale (Moment or Postgres
/// slower than `FRESH`).
pub struct Slots {
    pub calls: Arc<Semaphore>,
    in_slots_until: std::sync::Mutex<Option<Instant>>,
}

impl Slots {
    pub fn new(concurrency: usize) -> Arc<Self> {
        Arc::new(Self {
            calls: Arc::new(Semaphore::new(concurrency)),
            in_slots_until: std::sync::Mutex::new(None),
        })
    }

    /// Whether groups may be checked ahead of their slots now.
    fn ahead(&self) -> bool {
        let until = *self
            .in_slots_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        until.is_none_or(|t| Instant::now() >= t)
    }

    /// A check went stale: checks go into the slots for `BACK_OFF`. True when they were
    /// being made ahead until now.
    fn went_stale(&self) -> bool {
        let now = Instant::now();
        let mut until = self
            .in_slots_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let was = until.is_none_or(|t| now >= t);
        *until = Some(now + BACK_OFF);
        was
    }
}

/// A recorded charge waiting to be sent: the charge, its lease token, its subscription.
type Held = (Charge, Uuid, Subscription);

/// A group's check under way.
type Check = std::pin::Pin<Box<dyn Future<Output = Checked> + Send>>;

/// A group, those of it that may be sent now, and when their check began.
type Checked = (Vec<Held>, Vec<Charge>, Instant);

/// What the send loop waited for.
enum Next {
    Checked(Checked),
    Slot(Option<OwnedSemaphorePermit>),
}

/// What a batch came to: charges made, the subscriptions left to the one-at-a-time path, and
/// the charges whose check went stale while they waited for a slot (checked again).
pub struct Batch {
    pub charged: usize,
    pub left: Vec<Subscription>,
    pub rechecked: usize,
}

/// Charges the regular periods of `due` (claimed under `token`) in one batch.
pub async fn charge(
    state: &AppState,
    due: Vec<Subscription>,
    token: Uuid,
    slots: &Slots,
    sent: &mut super::scheduler::Sending,
) -> sqlx::Result<Batch> {
    let now = state.clock.now();
    let (mut fast, mut left): (Vec<Subscription>, Vec<Subscription>) = due
        .into_iter()
        .partition(|s| s.retry_at.is_none() && !s.cancel_at_period_end);
    let ids: Vec<Uuid> = fast.iter().map(|s| s.mandate_id).collect();
    let found = mandates::by_ids(&state.db, &ids).await?;
    // Terms that count payments are checked with the mandate locked, one charge at a time;
    // a charge the terms refuse is refused there, with its reason recorded.
    fast.retain(|s| {
        let fits = found
            .iter()
            .find(|m| m.id == s.mandate_id)
            .is_some_and(|m| {
                let t = m.terms();
                !state.settings.local_terms_check
                    || (!t.counts() && terms::check_static(&t, s.amount, now).is_ok())
            })
            && s.schedule.0.schedule().is_ok();
        if !fits {
            left.push(s.clone());
        }
        fits
    });
    if fast.is_empty() {
        return Ok(Batch {
            charged: 0,
            left,
            rechecked: 0,
        });
    }
    let batch: Vec<Scheduled> = fast
        .iter()
        .map(|s| Scheduled {
            id: Uuid::now_v7(),
            subscription_id: s.id,
            period: s.next_period,
            idempotency_key: format!("subscription:{}:{}:0", s.id, s.next_period),
            lease_token: Uuid::new_v4(),
        })
        .collect();
    let lease = send_lease_secs(state);
    let made = charges::insert_scheduled(&state.db, &batch, lease, now, token).await?;
    // Not recorded here (a charge already made for the period, a mandate no longer active):
    // the one-at-a-time path says which.
    let (fast, rest): (Vec<Subscription>, Vec<Subscription>) = fast
        .into_iter()
        .partition(|s| made.iter().any(|c| c.subscription_id == Some(s.id)));
    left.extend(rest);
    let held: Vec<(Charge, Uuid, Subscription)> = made
        .into_iter()
        .filter_map(|charge| {
            let sub = fast.iter().find(|s| Some(s.id) == charge.subscription_id)?;
            let held = batch.iter().find(|b| b.id == charge.id)?;
            Some((charge, held.lease_token, sub.clone()))
        })
        .collect();
    // Checked a group at a time ahead of the slots, while the calls before them are out: the
    // leases renewed, the sends counted, and each charge still sendable (pending, its mandate
    // active, its subscription live), for the group in one statement. Each checked charge is
    // sent as soon as a slot frees up; one that waited longer than `FRESH` has its send taken
    // back and is checked again, in its slot: one slot awaited and whatever others are free,
    // then the group's check right before its calls. After a stale check, every chunk checks
    // in its slots for `BACK_OFF`. So a slow Moment or Postgres costs a charge one second check
    // at most, and the few checked ahead each `BACK_OFF`.
    let ahead = (state.settings.billing.concurrency / 4).max(1);
    let mut calls = tokio::task::JoinSet::new();
    let mut unanswered: Vec<Held> = Vec::new();
    let mut rechecked = 0;
    let mut queue = std::collections::VecDeque::from(held);
    // Taken back after a stale check: checked in the slots only.
    let mut again: std::collections::VecDeque<Held> = Default::default();
    let mut checked: std::collections::VecDeque<(Charge, Held, Instant)> = Default::default();
    let mut checking: Option<Check> = None;
    loop {
        if checking.is_none() && checked.len() < ahead && !queue.is_empty() && slots.ahead() {
            let n = (ahead - checked.len()).min(queue.len());
            let group: Vec<Held> = queue.drain(..n).collect();
            let db = state.db.clone();
            checking = Some(Box::pin(async move {
                let at = Instant::now();
                let begun = check(&db, &group, lease).await;
                (group, begun, at)
            }));
        }
        if checking.is_none() && checked.is_empty() {
            let waiting = again.len() + queue.len();
            if waiting == 0 {
                break;
            }
            let mut permits = vec![Arc::clone(&slots.calls).acquire_owned().await.ok()];
            while permits.len() < waiting {
                match Arc::clone(&slots.calls).try_acquire_owned() {
                    Ok(p) => permits.push(Some(p)),
                    Err(_) => break,
                }
            }
            let from_again = permits.len().min(again.len());
            let mut group: Vec<Held> = again.drain(..from_again).collect();
            group.extend(queue.drain(..permits.len() - from_again));
            let begun = check(&state.db, &group, lease).await;
            for (held, permit) in group.into_iter().zip(permits) {
                match begun.iter().find(|c| c.id == held.0.id) {
                    Some(c) => spawn_call(&mut calls, state, c.clone(), held, permit),
                    None => unanswered.push(held),
                }
            }
            continue;
        }
        let next = tokio::select! {
            done = async { checking.as_mut().expect("a check under way").await }, if checking.is_some() => {
                Next::Checked(done)
            }
            permit = Arc::clone(&slots.calls).acquire_owned(), if !checked.is_empty() => Next::Slot(permit.ok()),
        };
        match next {
            Next::Checked((group, begun, at)) => {
                checking = None;
                for held in group {
                    match begun.iter().find(|c| c.id == held.0.id) {
                        Some(c) => checked.push_back((c.clone(), held, at)),
                        None => unanswered.push(held),
                    }
                }
            }
            Next::Slot(permit) => {
                let Some((c, held, at)) = checked.pop_front() else {
                    continue;
                };
                if at.elapsed() <= FRESH {
                    spawn_call(&mut calls, state, c, held, permit);
                    continue;
                }
                drop(permit);
                rechecked += 1;
                if slots.went_stale() {
                    tracing::info!(
                        waited_ms = at.elapsed().as_millis() as u64,
                        back_off_secs = BACK_OFF.as_secs(),
                        "a scheduled charge's check went stale waiting for a slot; checks go into the slots for a while"
                    );
                }
                // Not sent: the count taken back (else a charge never sent would read as one
                // whose outcome is unknown), and checked again.
                match charges::unbegin_send(&state.db, c.id, held.1).await {
                    Ok(true) => again.push_back(held),
                    // Someone else holds it now, or it has ended: the single path says which.
                    Ok(false) => unanswered.push(held),
                    Err(e) => {
                        tracing::warn!(charge_id = %c.id, error = %e, "a stale check's send could not be taken back; the charge counts as sent");
                        unanswered.push(held);
                    }
                }
            }
        }
    }
    if left.is_empty() {
        sent.done();
    }
    let mut answered: Vec<(Charge, Uuid, Subscription, Session)> = Vec::new();
    while let Some(joined) = calls.join_next().await {
        let Ok((charge, lease_token, sub, answer)) = joined else {
            continue;
        };
        match answer {
            Attempt::Session { session, .. }
                if mismatch(&charge, &session, state.moment.mode()).is_none() =>
            {
                answered.push((charge, lease_token, sub, session));
            }
            _ => unanswered.push((charge, lease_token, sub)),
        }
    }
    let charged = answered.len() + unanswered.len();
    record(state, &answered, token).await?;
    // Anything but a session (or not sendable any more): to the single path under the same
    // keys, which knows what each answer means (a refusal Moment replays is final; silence is
    // retried; a charge that may no longer be sent ends with the reason), each in a slot.
    for (charge, lease_token, sub) in unanswered {
        let id = charge.id;
        let slot = slots.calls.acquire().await;
        send(state, charge, lease_token).await?;
        drop(slot);
        let next = next_of(&sub);
        subscriptions::charged(&state.db, sub.id, token, id, Some(next)).await?;
    }
    Ok(Batch {
        charged,
        left,
        rechecked,
    })
}

/// The group's check (see `charges::begin_sends`): those of it that may be sent now. Not
/// checked (Postgres unavailable, say): none, and the one-at-a-time path finds out.
async fn check(db: &sqlx::PgPool, group: &[Held], lease: f64) -> Vec<Charge> {
    let pairs: Vec<(Uuid, Uuid)> = group.iter().map(|(c, t, _)| (c.id, *t)).collect();
    charges::begin_sends(db, &pairs, lease, RESEND_WINDOW_SECS)
        .await
        .unwrap_or_default()
}

type Call = (Charge, Uuid, Subscription, Attempt);

/// Sends a checked charge (`begun`, as its check returned it) in its slot.
fn spawn_call(
    calls: &mut tokio::task::JoinSet<Call>,
    state: &AppState,
    begun: Charge,
    held: Held,
    permit: Option<OwnedSemaphorePermit>,
) {
    let state = state.clone();
    calls.spawn(async move {
        let _permit = permit;
        let (charge, lease_token, sub) = held;
        let answer = state
            .moment
            .create_session_once(&session_request(&begun), &begun.id.to_string())
            .await;
        (charge, lease_token, sub, answer)
    });
}

/// The subscription's next period after the one being charged, and when it falls due.
fn next_of(s: &Subscription) -> (i32, Option<time::OffsetDateTime>) {
    let n = s.next_period + 1;
    let at = s
        .schedule
        .0
        .schedule()
        .ok()
        .and_then(|schedule| schedule.at(n as u32));
    (n, at)
}

/// Moment's sessions for a batch, recorded in one statement; a webhook that came first, or an
/// answer that already carries the outcome, is applied as the single path would.
async fn record(
    state: &AppState,
    answered: &[(Charge, Uuid, Subscription, Session)],
    token: Uuid,
) -> sqlx::Result<()> {
    if answered.is_empty() {
        return Ok(());
    }
    let batch: Vec<Accepted<'_>> = answered
        .iter()
        .map(|(charge, lease_token, sub, session)| {
            let (next_period, next_charge_at) = next_of(sub);
            Accepted {
                charge_id: charge.id,
                lease_token: *lease_token,
                session,
                subscription_id: sub.id,
                subscription_token: token,
                next_period,
                next_charge_at,
            }
        })
        .collect();
    let recorded = charges::record_scheduled(&state.db, &batch).await?;
    for (_, session_id, waiting) in &recorded {
        if *waiting {
            events::apply_deferred(&state.db, Some(session_id)).await?;
        }
    }
    for (_, _, _, session) in answered {
        if session.status.is_some_and(|s| s != SessionStatus::Active) {
            events::apply_snapshot(&state.db, session).await?;
        }
    }
    Ok(())
}
