//! SQL for the `webhook_event` table: every verified delivery, stored once by `webhook-id`.

use sqlx::PgExecutor;

/// What became of a stored event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It moved (or confirmed) the state of a mandate or charge of ours.
    Applied,
    /// It needs nothing from us (an event type or session we do not act on).
    Ignored,
    /// Its session is not known here yet; applied once it is.
    Deferred,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Ignored => "ignored",
            Self::Deferred => "deferred",
        }
    }
}

/// A verified delivery.
pub struct NewEvent<'a> {
    pub webhook_id: &'a str,
    pub event_id: Option<&'a str>,
    pub event_type: &'a str,
    pub session_id: Option<&'a str>,
    pub external_reference: Option<&'a str>,
    pub payload: &'a str,
    pub outcome: Outcome,
}

/// Stores the event; `false` when this `webhook-id` was stored before (a duplicate).
pub async fn insert(conn: impl PgExecutor<'_>, e: &NewEvent<'_>) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        "insert into webhook_event (webhook_id, event_id, event_type, session_id, external_reference,
                                    payload, outcome, applied_at)
         values ($1, $2, $3, $4, $5, $6, $7, case when $7 = 'applied' then now() end)
         on conflict (webhook_id) do nothing",
    )
    .bind(e.webhook_id)
    .bind(e.event_id)
    .bind(e.event_type)
    .bind(e.session_id)
    .bind(e.external_reference)
    .bind(e.payload)
    .bind(e.outcome.as_str())
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// A deferred event waiting for its session.
#[derive(Debug, sqlx::FromRow)]
pub struct Deferred {
    pub webhook_id: String,
    pub payload: String,
}

/// Locks up to `limit` deferred events, oldest first (`session_id` narrows them to one
/// session), skipping those another worker holds.
pub async fn lock_deferred(
    conn: impl PgExecutor<'_>,
    session_id: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<Deferred>> {
    sqlx::query_as(
        "select webhook_id, payload from webhook_event
         where outcome = 'deferred' and ($1::text is null or session_id = $1)
         order by received_at
         limit $2
         for update skip locked",
    )
    .bind(session_id)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Marks a deferred event applied.
pub async fn mark_applied(conn: impl PgExecutor<'_>, webhook_id: &str) -> sqlx::Result<()> {
    sqlx::query(
        "update webhook_event set outcome = 'applied', applied_at = now() where webhook_id = $1",
    )
    .bind(webhook_id)
    .execute(conn)
    .await?;
    Ok(())
}
