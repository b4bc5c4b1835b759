//! Applying Moment session snapshots, from webhooks, fetches and create answers alike.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::Effect;
use crate::moment::wire::{Event, Session};
use crate::store::ingest::Ingest;
use crate::store::webhook_events::{self, Action, Delivery, Outcome};
use crate::store::{charges, mandates};

/// What applying an effect did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The mandate or charge moved forward.
    Moved,
    /// It exists but is already at or past that state.
    Unchanged,
    /// Nothing of ours matches the session (yet).
    Unknown,
}

/// Applies `effect` to the mandate or charge it concerns, forward only.
pub async fn apply(conn: &mut PgConnection, effect: &Effect) -> sqlx::Result<Applied> {
    let (moved, exists) = match effect {
        Effect::Mandate(t) => match mandates::apply(&mut *conn, t).await? {
            Some(m) => {
                let m = m.record;
                tracing::info!(mandate_id = %m.id, status = %m.status, "mandate updated");
                (true, true)
            }
            None => (false, mandates::exists_for(&mut *conn, t).await?),
        },
        Effect::Charge(t) => match charges::apply(&mut *conn, t).await? {
            Some(c) => {
                paid_after_failure(c.record.id, &c.was, c.record.status.as_str());
                let c = c.record;
                tracing::info!(charge_id = %c.id, status = %c.status, "charge updated");
                (true, true)
            }
            None => (false, charges::exists_for(&mut *conn, t).await?),
        },
    };
    Ok(match (moved, exists) {
        (true, _) => Applied::Moved,
        (false, true) => Applied::Unchanged,
        (false, false) => Applied::Unknown,
    })
}

/// Moment is the source of truth for money moved: a charge we had marked `failed` that
/// Moment reports paid is now `succeeded`. Worth a warning and a count: something we took for
/// a refusal was not one.
fn paid_after_failure(id: Uuid, was: &str, now: &str) {
    if was == "failed" && now == "succeeded" {
        tracing::warn!(charge_id = %id, "Moment reports a payment for a charge marked failed; it is now succeeded");
        crate::metrics::charge_paid_after_failure();
    }
}

/// What a verified event carries for us.
enum Carried {
    /// Not a `payment_session.*` event.
    Nothing,
    /// A `payment_session.*` event whose `data` is not a session we can read.
    Unreadable(String),
    Session(Box<Session>),
}

fn carried(event: &Event) -> Carried {
    if !event.kind.starts_with("payment_session.") {
        return Carried::Nothing;
    }
    match serde_json::from_value(event.data.clone()) {
        Ok(session) => Carried::Session(Box::new(session)),
        Err(e) => Carried::Unreadable(e.to_string()),
    }
}

/// The session carried by a `payment_session.*` event, if it is one we can read.
fn session_of(event: &Event) -> Option<Session> {
    match carried(event) {
        Carried::Session(s) => Some(*s),
        _ => None,
    }
}

/// What became of a verified delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    Stored(Outcome),
    Duplicate,
}

/// What storing a verified delivery asks: kept as it is, or applied to the record it names.
/// `mode` is our key's (`live` or `test`): an event of the other mode moves nothing.
pub fn delivery(webhook_id: &str, payload: String, event: &Event, mode: &str) -> Delivery {
    let carried = carried(event);
    let session = match &carried {
        Carried::Session(s) => Some(s.as_ref()),
        _ => None,
    };
    let action = match (&carried, session.and_then(Effect::of)) {
        (Carried::Unreadable(reason), _) => {
            tracing::warn!(
                webhook_id,
                event_type = event.kind,
                reason,
                "a verified event's session cannot be read; stored as unreadable"
            );
            Action::Keep(Outcome::Unreadable)
        }
        (Carried::Session(s), Some(_)) if s.mode.as_deref().is_some_and(|m| m != mode) => {
            Action::Keep(Outcome::Mismatch)
        }
        (_, None) => Action::Keep(Outcome::Ignored),
        (_, Some(effect)) => Action::Apply(Box::new(effect)),
    };
    Delivery {
        webhook_id: webhook_id.to_owned(),
        event_id: event.id.clone(),
        event_type: event.kind.clone(),
        session_id: session.map(|s| s.id.clone()),
        external_reference: session.and_then(|s| s.external_reference.clone()),
        payload,
        action,
    }
}

/// Stores a verified delivery once (by `webhook-id`) and applies it: one statement, shared
/// with the deliveries that arrive beside it (see [`Ingest`]).
pub async fn receive(ingest: &Ingest, delivery: Delivery) -> sqlx::Result<Receipt> {
    let webhook_id = delivery.webhook_id.clone();
    let event_type = delivery.event_type.clone();
    let charge_to = match &delivery.action {
        Action::Apply(e) => match e.as_ref() {
            Effect::Charge(t) => Some(t.to.as_str()),
            Effect::Mandate(_) => None,
        },
        Action::Keep(_) => None,
    };
    let recorded = ingest.store(delivery).await?;
    Ok(match recorded {
        None => Receipt::Duplicate,
        Some(r) => {
            if let Some(id) = r.moved {
                if let (Some(was), Some(to)) = (&r.was, charge_to) {
                    paid_after_failure(id, was, to);
                }
                tracing::info!(record_id = %id, event_type, "moved by webhook");
            }
            if r.outcome == Outcome::Mismatch {
                tracing::warn!(
                    webhook_id,
                    event_type,
                    "the event names a record of ours it does not match (session, mode, amount or currency); not applied"
                );
            }
            Receipt::Stored(r.outcome)
        }
    })
}

/// Deferred events applied per transaction, and pages looked at in one worker run at most.
const DEFERRED_PAGE: i64 = 100;
const DEFERRED_PAGES: usize = 50;

/// Applies deferred events whose session is now known: those of `session_id`, or any, page by
/// page, oldest first, so that events that still wait never keep newer ones from their turn.
/// Returns how many were applied.
pub async fn apply_deferred(db: &PgPool, session_id: Option<&str>) -> sqlx::Result<usize> {
    let mut applied = 0;
    let mut after: Option<(time::OffsetDateTime, String)> = None;
    for _ in 0..DEFERRED_PAGES {
        let mut tx = db.begin().await?;
        let page = webhook_events::lock_deferred(
            &mut *tx,
            session_id,
            after.as_ref().map(|(at, id)| (*at, id.as_str())),
            DEFERRED_PAGE,
        )
        .await?;
        for e in &page {
            let effect = serde_json::from_str::<Event>(&e.payload)
                .ok()
                .as_ref()
                .and_then(session_of)
                .as_ref()
                .and_then(Effect::of);
            let Some(effect) = effect else { continue };
            if apply(&mut tx, &effect).await? != Applied::Unknown {
                webhook_events::mark_applied(&mut *tx, &e.webhook_id).await?;
                applied += 1;
            }
        }
        tx.commit().await?;
        match page.last() {
            Some(last) if page.len() as i64 == DEFERRED_PAGE => {
                after = Some((last.received_at, last.webhook_id.clone()));
            }
            _ => break,
        }
    }
    if applied > 0 {
        tracing::info!(applied, "deferred webhook events applied");
    }
    Ok(applied)
}

/// Applies a session snapshot fetched from or answered by Moment (no event is stored).
pub async fn apply_snapshot(db: &PgPool, session: &Session) -> sqlx::Result<Applied> {
    match Effect::of(session) {
        Some(effect) => apply(&mut *db.acquire().await?, &effect).await,
        None => Ok(Applied::Unchanged),
    }
}
