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

/// A verified delivery, owned, with what storing it asks: keep it as it is, or apply it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub webhook_id: String,
    pub event_id: Option<String>,
    pub event_type: String,
    pub session_id: Option<String>,
    pub external_reference: Option<String>,
    pub payload: String,
    pub action: Action,
}

/// What storing a delivery does beside keeping it.
#[derive(Debug, Clone)]
pub enum Action {
    /// Stored with this outcome (ignored, mismatch, unreadable), nothing applied.
    Keep(Outcome),
    /// Applied to the mandate or charge it names, as [`record`] does.
    Apply(Box<Effect>),
}

impl Delivery {
    fn event(&self) -> NewEvent<'_> {
        NewEvent {
            webhook_id: &self.webhook_id,
            event_id: self.event_id.as_deref(),
            event_type: &self.event_type,
            session_id: self.session_id.as_deref(),
            external_reference: self.external_reference.as_deref(),
            payload: &self.payload,
        }
    }

    /// The session it applies to, if it applies to one: two deliveries of one session are
    /// never in the same batch (one statement cannot move a row twice).
    pub fn target(&self) -> Option<&str> {
        match &self.action {
            Action::Apply(e) => Some(match e.as_ref() {
                Effect::Mandate(t) => &t.session_id,
                Effect::Charge(t) => &t.session_id,
            }),
            Action::Keep(_) => None,
        }
    }

    /// Our id it names, if it names one.
    pub fn our_id(&self) -> Option<Uuid> {
        match &self.action {
            Action::Apply(e) => match e.as_ref() {
                Effect::Mandate(t) => t.external_reference,
                Effect::Charge(t) => t.external_reference,
            },
            Action::Keep(_) => None,
        }
    }
}

/// Stores one delivery in one statement ([`record`] or [`record_unapplied`]); `None` for a
/// duplicate `webhook-id`.
pub async fn record_one(conn: impl PgExecutor<'_>, d: &Delivery) -> sqlx::Result<Option<Recorded>> {
    match &d.action {
        Action::Keep(outcome) => record_unapplied(conn, &d.event(), *outcome).await,
        Action::Apply(effect) => record(conn, &d.event(), effect).await,
    }
}

/// [`MANDATE_WEBHOOK`] and [`CHARGE_WEBHOOK`] for a batch of deliveries, in one statement and
/// so one commit: the deliveries arrive as arrays, one element each (`n` is the position, from
/// 1). Each record moves as it would alone (the same forward-only update and the same
/// outcome); the records are locked first, in the order of their ids (`for no key update`,
/// the lock an update takes, after `order by`), the order the scheduler's batches lock charges
/// in, so that they and the webhooks' batches never wait on each other in a circle. The caller
/// keeps `webhook-id`s, sessions and our ids unique within a batch.
const BATCH: &str = "with i as (
    select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::text[], $8::uuid[], $9::text[], $10::text[], $11::text[], $12::text[],
                         $13::text[], $14::jsonb[], $15::text[], $16::bigint[], $17::text[])
        with ordinality as i(webhook_id, event_id, event_type, session_id, external_reference,
                             payload, kind, our_id, t_session, to_status, customer_id,
                             payment_method_id, payment_id, failure, from_statuses, amount,
                             currency, n)),
m_ours as materialized (
    select i.n, m.id, m.status from i
    join mandate m on m.id = coalesce(i.our_id, (select id from mandate where session_id = i.t_session))
    where i.kind = 'mandate'
    order by m.id
    for no key update of m),
m_moved as (
    update mandate m set status = i.to_status, session_id = coalesce(m.session_id, i.t_session),
           customer_id = coalesce(i.customer_id, m.customer_id),
           payment_method_id = coalesce(i.payment_method_id, m.payment_method_id),
           payment_id = coalesce(i.payment_id, m.payment_id), failure = coalesce(i.failure, m.failure),
           locked_until = null, updated_at = now()
    from m_ours o join i on i.n = o.n
    where m.id = o.id and m.status = any(string_to_array(i.from_statuses, ','))
      and (m.session_id is null or m.session_id = i.t_session)
      and (i.amount is null or m.amount = i.amount) and (i.currency is null or m.currency = i.currency)
    returning o.n, m.id, o.status as was),
m_matched as (
    select o.n from m_ours o join mandate m on m.id = o.id join i on i.n = o.n
    where (m.session_id is null or m.session_id = i.t_session)
      and (i.amount is null or m.amount = i.amount) and (i.currency is null or m.currency = i.currency)),
c_ours as materialized (
    select i.n, c.id, c.status from i
    join charge c on c.id = coalesce(i.our_id, (select id from charge where session_id = i.t_session))
    where i.kind = 'charge'
    order by c.id
    for no key update of c),
c_moved as (
    update charge c set status = i.to_status, session_id = coalesce(c.session_id, i.t_session),
           payment_id = coalesce(i.payment_id, c.payment_id),
           failure = case when i.to_status = 'succeeded' then null else coalesce(i.failure, c.failure) end,
           review_reason = null, next_attempt_at = null, updated_at = now()
    from c_ours o join i on i.n = o.n
    where c.id = o.id and c.status = any(string_to_array(i.from_statuses, ','))
      and (c.session_id is null or c.session_id = i.t_session)
      and (i.amount is null or c.amount = i.amount) and (i.currency is null or c.currency = i.currency)
    returning o.n, c.id, o.status as was),
c_matched as (
    select o.n from c_ours o join charge c on c.id = o.id join i on i.n = o.n
    where (c.session_id is null or c.session_id = i.t_session)
      and (i.amount is null or c.amount = i.amount) and (i.currency is null or c.currency = i.currency)),
moved as (select * from m_moved union all select * from c_moved),
ours as (select n from m_ours union all select n from c_ours),
matched as (select n from m_matched union all select n from c_matched),
judged as (
    select i.*, case when i.kind not in ('mandate', 'charge') then i.kind
                     when i.n in (select n from moved) or i.n in (select n from matched) then 'applied'
                     when i.n in (select n from ours) then 'mismatch'
                     else 'deferred' end as outcome
    from i),
stored as (
    insert into webhook_event (webhook_id, event_id, event_type, session_id,
                               external_reference, payload, outcome, applied_at)
    select webhook_id, event_id, event_type, session_id, external_reference, payload, outcome,
           case when outcome = 'applied' then now() end
    from judged order by n
    on conflict (webhook_id) do nothing
    returning webhook_id, outcome)
select j.n, s.outcome, m.id, m.was
from stored s join judged j on j.webhook_id = s.webhook_id
left join moved m on m.n = j.n";

/// Stores a batch of deliveries in one statement (see [`BATCH`]): for each, in order, what
/// [`record_one`] would have returned for it alone.
pub async fn record_batch(
    db: &sqlx::PgPool,
    batch: &[&Delivery],
) -> sqlx::Result<Vec<Option<Recorded>>> {
    #[derive(Default)]
    struct Columns<'a> {
        webhook_id: Vec<&'a str>,
        event_id: Vec<Option<&'a str>>,
        event_type: Vec<&'a str>,
        session_id: Vec<Option<&'a str>>,
        external_reference: Vec<Option<&'a str>>,
        payload: Vec<&'a str>,
        kind: Vec<&'static str>,
        our_id: Vec<Option<Uuid>>,
        t_session: Vec<Option<&'a str>>,
        to_status: Vec<Option<&'static str>>,
        customer_id: Vec<Option<&'a str>>,
        payment_method_id: Vec<Option<&'a str>>,
        payment_id: Vec<Option<&'a str>>,
        failure: Vec<Option<sqlx::types::Json<&'a serde_json::Value>>>,
        from_statuses: Vec<Option<String>>,
        amount: Vec<Option<i64>>,
        currency: Vec<Option<&'a str>>,
    }
    let mut c = Columns::default();
    for d in batch {
        c.webhook_id.push(&d.webhook_id);
        c.event_id.push(d.event_id.as_deref());
        c.event_type.push(&d.event_type);
        c.session_id.push(d.session_id.as_deref());
        c.external_reference.push(d.external_reference.as_deref());
        c.payload.push(&d.payload);
        match &d.action {
            Action::Keep(outcome) => {
                c.kind.push(outcome.as_str());
                c.our_id.push(None);
                c.t_session.push(None);
                c.to_status.push(None);
                c.customer_id.push(None);
                c.payment_method_id.push(None);
                c.payment_id.push(None);
                c.failure.push(None);
                c.from_statuses.push(None);
                c.amount.push(None);
                c.currency.push(None);
            }
            Action::Apply(effect) => {
                let (
                    kind,
                    t_session,
                    to,
                    customer,
                    method,
                    payment,
                    failure,
                    from,
                    amount,
                    currency,
                ) = match effect.as_ref() {
                    Effect::Mandate(t) => (
                        "mandate",
                        &t.session_id,
                        t.to.as_str(),
                        t.customer_id.as_deref(),
                        t.payment_method_id.as_deref(),
                        &t.payment_id,
                        &t.failure,
                        t.from
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        t.amount,
                        &t.currency,
                    ),
                    Effect::Charge(t) => (
                        "charge",
                        &t.session_id,
                        t.to.as_str(),
                        None,
                        None,
                        &t.payment_id,
                        &t.failure,
                        t.from
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        t.amount,
                        &t.currency,
                    ),
                };
                c.kind.push(kind);
                c.our_id.push(d.our_id());
                c.t_session.push(Some(t_session));
                c.to_status.push(Some(to));
                c.customer_id.push(customer);
                c.payment_method_id.push(method);
                c.payment_id.push(payment.as_deref());
                c.failure.push(failure.as_ref().map(sqlx::types::Json));
                c.from_statuses.push(Some(from));
                c.amount.push(amount);
                c.currency.push(currency.as_deref());
            }
        }
    }
    // The answers are matched to the deliveries by `webhook-id`; a batch where one repeats is
    // stored one delivery at a time instead (the writer never makes one).
    let ids: std::collections::HashSet<&str> = c.webhook_id.iter().copied().collect();
    if ids.len() < batch.len() {
        let mut out = Vec::with_capacity(batch.len());
        for d in batch {
            out.push(record_one(db, d).await?);
        }
        return Ok(out);
    }
    let rows: Vec<(i64, String, Option<Uuid>, Option<String>)> = sqlx::query_as(BATCH)
        .bind(&c.webhook_id)
        .bind(&c.event_id)
        .bind(&c.event_type)
        .bind(&c.session_id)
        .bind(&c.external_reference)
        .bind(&c.payload)
        .bind(&c.kind)
        .bind(&c.our_id)
        .bind(&c.t_session)
        .bind(&c.to_status)
        .bind(&c.customer_id)
        .bind(&c.payment_method_id)
        .bind(&c.payment_id)
        .bind(&c.failure)
        .bind(&c.from_statuses)
        .bind(&c.amount)
        .bind(&c.currency)
        .fetch_all(db)
        .await?;
    let mut out: Vec<Option<Recorded>> = vec![None; batch.len()];
    for (n, outcome, moved, was) in rows {
        if let Some(slot) = usize::try_from(n).ok().and_then(|n| out.get_mut(n - 1)) {
            *slot = Some(Recorded {
                outcome: Outcome::parse(&outcome),
                moved,
                was,
            });
        }
    }
    Ok(out)
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
/// one call stays short), oldest first, then by their primary key: written as
/// `events::delete_old`. Postgres finds them through `webhook_event_received_idx` (reading
/// every row past the cutoff, the kept ones too, before taking the oldest, when it plans
/// for the call's own values). Mismatched and unreadable ones are kept for an operator.
pub async fn delete_old(conn: impl PgExecutor<'_>, days: f64, limit: i64) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "delete from webhook_event where webhook_id = any(array(
             select webhook_id from webhook_event
             where received_at < now() - make_interval(days => 1) * $1
               and outcome in ('applied', 'ignored', 'orphaned')
             order by received_at
             limit $2))",
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
