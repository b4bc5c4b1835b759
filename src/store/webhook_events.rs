//! SQL for the `webhook_event` table: every verified delivery, stored once by `webhook-id`.

use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use sqlx::{PgExecutor, Postgres};
use uuid::Uuid;

use crate::domain::Effect;
use crate::store::{charges, mandates};

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
}

/// What [`record`] did with a delivery that was not a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub outcome: Outcome,
    /// The mandate or charge this delivery moved forward, if it moved one.
    pub moved: Option<Uuid>,
}

/// Stores an event that needs nothing from us; `None` when this `webhook-id` was stored
/// before (a duplicate).
pub async fn record_ignored(
    conn: impl PgExecutor<'_>,
    e: &NewEvent<'_>,
) -> sqlx::Result<Option<Recorded>> {
    let inserted = sqlx::query(
        "insert into webhook_event (webhook_id, event_id, event_type, session_id, external_reference,
                                    payload, outcome)
         values ($1, $2, $3, $4, $5, $6, 'ignored')
         on conflict (webhook_id) do nothing",
    )
    .bind(e.webhook_id)
    .bind(e.event_id)
    .bind(e.event_type)
    .bind(e.session_id)
    .bind(e.external_reference)
    .bind(e.payload)
    .execute(conn)
    .await?
    .rows_affected();
    Ok((inserted == 1).then_some(Recorded {
        outcome: Outcome::Ignored,
        moved: None,
    }))
}

/// The one statement a webhook for a mandate costs (one round trip, no explicit
/// transaction): the forward-only update of `mandates::APPLY_UPDATE` (the `moved` CTE), and
/// the event stored with its outcome: `applied` when the mandate exists (moved now, or
/// already at or past that state), `deferred` when it is not known here yet.
///
/// Parameters: `$1` our id (Moment's `external_reference`) or null, `$2` the session id,
/// `$3` the new status, `$4` customer id, `$5` payment method id, `$6` payment id, `$7` the
/// failure, `$8` the statuses it may move from (as `mandates::bind_transition` binds them);
/// then the event: `$9` webhook id, `$10` event id, `$11` type, `$12` session id, `$13`
/// external reference, `$14` payload. Returns the outcome and the id of the mandate moved,
/// or no row for a duplicate `webhook-id`. The benchmark runs this very text under pgbench.
pub const MANDATE_WEBHOOK: &str = "with moved as (
    update mandate set status = $3, session_id = coalesce(session_id, $2),
                customer_id = coalesce($4, customer_id), payment_method_id = coalesce($5, payment_method_id),
                payment_id = coalesce($6, payment_id), failure = coalesce($7, failure),
                locked_until = null, updated_at = now()
         where id = coalesce($1, (select id from mandate where session_id = $2)) and status = any($8)
    returning id),
known as (
    select exists (select 1 from moved)
        or exists (select 1 from mandate where id = coalesce($1, (select id from mandate where session_id = $2))) as yes)
insert into webhook_event (webhook_id, event_id, event_type, session_id,
                           external_reference, payload, outcome, applied_at)
select $9, $10, $11, $12, $13, $14,
       case when known.yes then 'applied' else 'deferred' end,
       case when known.yes then now() end
from known
on conflict (webhook_id) do nothing
returning outcome, (select id from moved limit 1) as moved";

/// The one statement a webhook for a charge costs: as [`MANDATE_WEBHOOK`], with the update of
/// `charges::APPLY_UPDATE`.
///
/// Parameters: `$1` our id or null, `$2` the session id, `$3` the new status, `$4` payment
/// id, `$5` the failure, `$6` the statuses it may move from (as `charges::bind_transition`
/// binds them); then the event: `$7` webhook id, `$8` event id, `$9` type, `$10` session
/// id, `$11` external reference, `$12` payload.
pub const CHARGE_WEBHOOK: &str = "with moved as (
    update charge set status = $3, session_id = coalesce(session_id, $2),
                payment_id = coalesce($4, payment_id), failure = coalesce($5, failure),
                next_attempt_at = null, updated_at = now()
         where id = coalesce($1, (select id from charge where session_id = $2)) and status = any($6)
    returning id),
known as (
    select exists (select 1 from moved)
        or exists (select 1 from charge where id = coalesce($1, (select id from charge where session_id = $2))) as yes)
insert into webhook_event (webhook_id, event_id, event_type, session_id,
                           external_reference, payload, outcome, applied_at)
select $7, $8, $9, $10, $11, $12,
       case when known.yes then 'applied' else 'deferred' end,
       case when known.yes then now() end
from known
on conflict (webhook_id) do nothing
returning outcome, (select id from moved limit 1) as moved";

/// Applies `effect` and stores the event in one statement (one round trip, no explicit
/// transaction); `None` when this `webhook-id` was stored before (a duplicate).
///
/// A duplicate still runs the update, which is harmless: transitions only move forward, so a
/// second application of the same snapshot finds nothing to change. Two deliveries of one
/// event racing each other queue on the record's row lock, and on the event's primary key.
pub async fn record(
    conn: impl PgExecutor<'_>,
    e: &NewEvent<'_>,
    effect: &Effect,
) -> sqlx::Result<Option<Recorded>> {
    let row: Option<(String, Option<Uuid>)> = match effect {
        Effect::Mandate(t) => {
            let q = sqlx::query_as(MANDATE_WEBHOOK);
            bind_event(mandates::bind_transition(q, t), e)
                .fetch_optional(conn)
                .await?
        }
        Effect::Charge(t) => {
            let q = sqlx::query_as(CHARGE_WEBHOOK);
            bind_event(charges::bind_transition(q, t), e)
                .fetch_optional(conn)
                .await?
        }
    };
    Ok(row.map(|(outcome, moved)| Recorded {
        outcome: if outcome == "applied" {
            Outcome::Applied
        } else {
            Outcome::Deferred
        },
        moved,
    }))
}

/// Binds the event's six columns, after the transition's parameters.
fn bind_event<'q, O>(
    q: QueryAs<'q, Postgres, O, PgArguments>,
    e: &NewEvent<'q>,
) -> QueryAs<'q, Postgres, O, PgArguments> {
    q.bind(e.webhook_id)
        .bind(e.event_id)
        .bind(e.event_type)
        .bind(e.session_id)
        .bind(e.external_reference)
        .bind(e.payload)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_webhook_statement_runs_the_same_update_as_its_table() {
        assert!(MANDATE_WEBHOOK.contains(mandates::APPLY_UPDATE));
        assert!(CHARGE_WEBHOOK.contains(charges::APPLY_UPDATE));
    }
}
