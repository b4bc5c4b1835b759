//! Applying Moment session snapshots, from webhooks, fetches and create answers alike.

use sqlx::{PgConnection, PgPool};

use crate::domain::Effect;
use crate::moment::wire::{Event, Session};
use crate::store::webhook_events::{self, NewEvent, Outcome};
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
                tracing::info!(mandate_id = %m.id, status = %m.status, "mandate updated");
                (true, true)
            }
            None => (false, mandates::exists_for(&mut *conn, t).await?),
        },
        Effect::Charge(t) => match charges::apply(&mut *conn, t).await? {
            Some(c) => {
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

/// The session carried by a `payment_session.*` event, if it is one.
fn session_of(event: &Event) -> Option<Session> {
    if !event.kind.starts_with("payment_session.") {
        return None;
    }
    serde_json::from_value(event.data.clone()).ok()
}

/// What became of a verified delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    Stored(Outcome),
    Duplicate,
}

/// Stores a verified delivery once (by `webhook-id`) and applies it, in one statement.
pub async fn receive(
    db: &PgPool,
    webhook_id: &str,
    payload: &str,
    event: &Event,
) -> sqlx::Result<Receipt> {
    let session = session_of(event);
    let new = NewEvent {
        webhook_id,
        event_id: event.id.as_deref(),
        event_type: &event.kind,
        session_id: session.as_ref().map(|s| s.id.as_str()),
        external_reference: session
            .as_ref()
            .and_then(|s| s.external_reference.as_deref()),
        payload,
    };
    let recorded = match session.as_ref().and_then(Effect::of) {
        None => webhook_events::record_ignored(db, &new).await?,
        Some(effect) => webhook_events::record(db, &new, &effect).await?,
    };
    Ok(match recorded {
        None => Receipt::Duplicate,
        Some(r) => {
            if let Some(id) = r.moved {
                tracing::info!(record_id = %id, event_type = event.kind, "moved by webhook");
            }
            Receipt::Stored(r.outcome)
        }
    })
}

/// Applies deferred events whose session is now known: those of `session_id`, or any.
/// Returns how many were applied.
pub async fn apply_deferred(db: &PgPool, session_id: Option<&str>) -> sqlx::Result<usize> {
    let mut tx = db.begin().await?;
    let events = webhook_events::lock_deferred(&mut *tx, session_id, 100).await?;
    let mut applied = 0;
    for e in &events {
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
