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
    /// Deferred for longer than anything could still make its session known (72 h).
    Orphaned,
    /// It names a record of ours that it does not match (another session, the other mode,
    /// another amount or currency): stored, never applied.
    Mismatch,
    /// A verified `payment_session.*` event whose session cannot be read.
    Unreadable,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Ignored => "ignored",
            Self::Deferred => "deferred",
            Self::Orphaned => "orphaned",
            Self::Mismatch => "mismatch",
            Self::Unreadable => "unreadable",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "applied" => Self::Applied,
            "deferred" => Self::Deferred,
            "orphaned" => Self::Orphaned,
            "mismatch" => Self::Mismatch,
            "unreadable" => Self::Unreadable,
            _ => Self::Ignored,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub outcome: Outcome,
    /// The mandate or charge this delivery moved forward, if it moved one.
    pub moved: Option<Uuid>,
    /// The status it moved from.
    pub was: Option<String>,
}

/// Stores an event that is not applied (`outcome`: ignored, mismatch, unreadable); `None`
/// when this `webhook-id` was stored before (a duplicate).
pub async fn record_unapplied(
    conn: impl PgExecutor<'_>,
    e: &NewEvent<'_>,
    outcome: Outcome,
) -> sqlx::Result<Option<Recorded>> {
    let inserted = sqlx::query(
        "insert into webhook_event (webhook_id, event_id, event_type, session_id, external_reference,
                                    payload, outcome)
         values ($1, $2, $3, $4, $5, $6, $7)
         on conflict (webhook_id) do nothing",
    )
    .bind(e.webhook_id)
    .bind(e.event_id)
    .bind(e.event_type)
    .bind(e.session_id)
    .bind(e.external_reference)
    .bind(e.payload)
    .bind(outcome.as_str())
    .execute(conn)
    .await?
    .rows_affected();
    Ok((inserted == 1).then_some(Recorded {
        outcome,
        moved: None,
        was: None,
    }))
}

/// The one statement a webhook for a mandate costs (one round trip, no explicit
/// transaction): the forward-only move of `mandates::APPLY` (the `moved` CTE), and the event
/// stored with its outcome: `applied` when the mandate is the snapshot's own (moved now, or
/// already at or past that state), `mismatch` when the id or session names a mandate of ours
/// that the snapshot does not match (another session, amount or currency: it moves nothing),
/// `deferred` when no mandate is known for it yet.
///
/// Parameters: `$1` our id (Moment's `external_reference`) or null, `$2` the session id,
/// `$3` the new status, `$4` customer id, `$5` payment method id, `$6` payment id, `$7` the
/// failure, `$8` the statuses it may move from, `$9` the amount and `$10` the currency when
/// the snapshot has them (as `mandates::bind_transition` binds them); then the event: `$11`
/// webhook id, `$12` event id, `$13` type, `$14` session id, `$15` external reference, `$16`
/// payload. Returns the outcome, the id of the mandate moved and the status it was in; no
/// row for a duplicate `webhook-id`. The benchmark runs this very text under pgbench.
pub const MANDATE_WEBHOOK: &str = "with ours as (select id, status from mandate where id = coalesce($1, (select id from mandate where session_id = $2))),
moved as (
    update mandate m set status = $3, session_id = coalesce(m.session_id, $2),
           customer_id = coalesce($4, m.customer_id),
           payment_method_id = coalesce($5, m.payment_method_id),
           payment_id = coalesce($6, m.payment_id), failure = coalesce($7, m.failure),
           locked_until = null, updated_at = now()
    from ours
    where m.id = ours.id and m.status = any($8)
      and (m.session_id is null or m.session_id = $2)
      and ($9::bigint is null or m.amount = $9) and ($10::text is null or m.currency = $10)
    returning m.id, ours.status as was),
matched as (
    select 1 from mandate m join ours on m.id = ours.id
    where (m.session_id is null or m.session_id = $2)
      and ($9::bigint is null or m.amount = $9)
      and ($10::text is null or m.currency = $10))
insert into webhook_event (webhook_id, event_id, event_type, session_id,
                           external_reference, payload, outcome, applied_at)
select $11, $12, $13, $14, $15, $16,
       case when exists (select 1 from moved) or exists (select 1 from matched) then 'applied'
            when exists (select 1 from ours) then 'mismatch'
            else 'deferred' end,
       case when exists (select 1 from moved) or exists (select 1 from matched) then now() end
on conflict (webhook_id) do nothing
returning outcome, (select id from moved limit 1) as moved, (select was from moved limit 1) as was";

/// The one statement a webhook for a charge costs: as [`MANDATE_WEBHOOK`], with the move of
/// `charges::APPLY`.
///
/// Parameters: `$1` our id or null, `$2` the session id, `$3` the new status, `$4` payment
/// id, `$5` the failure, `$6` the statuses it may move from, `$7` the amount and `$8` the
/// currency when the snapshot has them (as `charges::bind_transition` binds them); then the
/// event: `$9` webhook id, `$10` event id, `$11` type, `$12` session id, `$13` external
/// reference, `$14` payload.
pub const CHARGE_WEBHOOK: &str = "with ours as (select id, status from charge where id = coalesce($1, (select id from charge where session_id = $2))),
moved as (
    update charge c set status = $3, session_id = coalesce(c.session_id, $2),
           payment_id = coalesce($4, c.payment_id),
           failure = case when $3 = 'succeeded' then null else coalesce($5, c.failure) end,
           review_reason = null, next_attempt_at = null, updated_at = now()
    from ours
    where c.id = ours.id and c.status = any($6)
      and (c.session_id is null or c.session_id = $2)
      and ($7::bigint is null or c.amount = $7) and ($8::text is null or c.currency = $8)
    returning c.id, ours.status as was),
matched as (
    select 1 from charge c join ours on c.id = ours.id
    where (c.session_id is null or c.session_id = $2)
      and ($7::bigint is null or c.amount = $7)
      and ($8::text is null or c.currency = $8))
insert into webhook_event (webhook_id, event_id, event_type, session_id,
                           external_reference, payload, outcome, applied_at)
select $9, $10, $11, $12, $13, $14,
       case when exists (select 1 from moved) or exists (select 1 from matched) then 'applied'
            when exists (select 1 from ours) then 'mismatch'
            else 'deferred' end,
       case when exists (select 1 from moved) or exists (select 1 from matched) then now() end
on conflict (webhook_id) do nothing
returning outcome, (select id from moved limit 1) as moved, (select was from moved limit 1) as was";

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
    type Row = (String, Option<Uuid>, Option<String>);
    let row: Option<Row> = match effect {
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
    Ok(row.map(|(outcome, moved, was)| Recorded {
        outcome: Outcome::parse(&outcome),
        moved,
        was,
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
    pub received_at: time::OffsetDateTime,
}

/// Locks up to `limit` deferred events received after `after` (a page's last `(received_at,
/// webhook_id)`; oldest first), skipping those another worker holds. `session_id` narrows
/// them to one session (by its index).
pub async fn lock_deferred(
    conn: impl PgExecutor<'_>,
    session_id: Option<&str>,
    after: Option<(time::OffsetDateTime, &str)>,
    limit: i64,
) -> sqlx::Result<Vec<Deferred>> {
    let (after_at, after_id) = after.unzip();
    sqlx::query_as(
        "select webhook_id, payload, received_at from webhook_event
         where outcome = 'deferred' and ($1::text is null or session_id = $1)
           and ($2::timestamptz is null or (received_at, webhook_id) > ($2, $3::text))
         order by received_at, webhook_id
         limit $4
         for update skip locked",
    )
    .bind(session_id)
    .bind(after_at)
    .bind(after_id)
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

/// Gives up on deferred events older than `after_secs`: no session of ours will appear for
/// them any more (outcome `orphaned`). Returns how many.
pub async fn orphan_old(conn: impl PgExecutor<'_>, after_secs: f64) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "update webhook_event set outcome = 'orphaned'
         where outcome = 'deferred' and received_at < now() - make_interval(secs => $1)",
    )
    .bind(after_secs)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes applied, ignored and orphaned events older than `days` (at most `limit` a call, so
/// one call stays short). Mismatched and unreadable ones are kept for an operator.
pub async fn delete_old(conn: impl PgExecutor<'_>, days: f64, limit: i64) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "delete from webhook_event where webhook_id in (
             select webhook_id from webhook_event
             where received_at < now() - make_interval(days => 1) * $1
               and outcome in ('applied', 'ignored', 'orphaned')
             limit $2)",
    )
    .bind(days)
    .bind(limit)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The part of `APPLY` after its `ours` CTE and before `returning`.
    fn update_of(apply: &str) -> &str {
        let start = apply.find("update ").unwrap();
        let end = apply.rfind("returning").unwrap();
        apply[start..end].trim()
    }

    #[test]
    fn each_webhook_statement_runs_the_same_move_as_its_table() {
        for (webhook, apply) in [
            (MANDATE_WEBHOOK, mandates::APPLY),
            (CHARGE_WEBHOOK, charges::APPLY),
        ] {
            let ours = &apply[..apply.find(')').unwrap()];
            assert!(webhook.contains(ours), "{ours}");
            assert!(webhook.contains(update_of(apply)), "{}", update_of(apply));
        }
    }
}
